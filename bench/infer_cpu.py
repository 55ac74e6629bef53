"""Benchmark: CPU inference speed of the six backbones, feature extraction included.

    python bench/infer_cpu.py [--backbones CAMPPlus TDNN] [--repeats 5] [--threads 2]
                              [--paths eager default openvino-bf16 fused onnx openvino onnx-int8 openvino-int8]
                              [--calibration LIST_OR_FOLDER]
                              [--peer-python /work/peer_venv/bin/python]

For each backbone (its config in configs/, random weights) and each shape (one 3 s utterance,
16 of them in one call, one 10 s utterance) it times ``MVectorPredictor.predict`` /
``predict_batch`` on numpy arrays, i.e. the whole user-facing path: loudness normalisation,
padding, Fbank, backbone, L2 normalisation. Paths: ``eager`` (the torch backend, BatchNorms kept),
``default`` (what ``MVectorPredictor(model_dir)`` runs unless told otherwise: backend ``auto``, on
the CPU the model converted for OpenVINO straight from torch and cached), ``openvino-bf16`` (the
opt-in backend of that name: the converted front-end in float32, then the converted backbone in
bfloat16),
``fused`` (the same with BatchNorm folded into convolutions, ``mvector.inference.batchnorm_fusion.fuse_batchnorm``),
``onnx`` (``mvector.inference.export`` then the ONNX Runtime backend, ``intra_op_num_threads=--threads``),
``openvino`` (the same graph compiled by OpenVINO, float32, ``INFERENCE_NUM_THREADS=--threads``)
and ``onnx-int8`` / ``openvino-int8`` (the graph with its convolutions quantized,
``mvector.inference.quantize``, calibrated on ``--calibration`` speech, under either engine).

One figure per line, the value last: ``<backbone> <path> <shape> <metric> <value>``; the first line,
``cpu isa - extensions ...``, names the CPU's vector extensions, which decide the figures:
  xRT            seconds of audio embedded per wall second (median of --repeats calls, after warm-up)
  GFLOPs         model FLOPs of one call (torch.utils.flop_counter on the eager path) / median time
  peak_fraction  that GFLOP/s over the fp32 matmul peak measured at the start of the same run
  cosine_vs_eager  lowest cosine between the path's embeddings and the eager ones (same inputs)
  ratio_vs_peer  this path's xRT / the reference toolkit's (``--peer-python``), same run and inputs
  lowest_ratio_vs_peer  per backbone, the default and openvino-bf16 paths' lowest ratio over the shapes
The first lines, ``startup <backend> - <metric> <seconds>``, time a fresh process: ``import_s``
(``from mvector import MVectorPredictor``), ``load_s`` (``MVectorPredictor()``, the packaged model,
converted beforehand) and ``first_embedding_s`` (its first ``predict`` of 3 s), for ``auto`` and ``torch``.
``--peer-python`` runs bench/peer_infer.py under the interpreter of a venv holding the reference
toolkit (PyPI ``mvector==1.1.7``; recipe in bench/README.md): its predictor, its packaged config
of the same name, random weights, the same arrays and thread count.
"""
import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mvector.inference.backends import import_onnxruntime
from mvector.config import load_config
from mvector.embedder import build_embedder
from mvector.errors import MVectorError
from mvector.inference.export import export_model
from mvector.model_dir import save_model_dir
from mvector.inference.predictor import MVectorPredictor
from mvector.registry import Registry
from peer import backbone_configs, default_predictor, figure, run_peer_on_workload
from synthetic_voice import voice_like


ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
# name -> (utterances in one call, seconds each)
SHAPES = {"b1x3s": (1, 3.0), "b16x3s": (16, 3.0), "b1x10s": (1, 10.0)}
MATMUL_SIZE = 2048
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_infer.py"
TRAIN_LIST = ROOT.parent / "shared" / "data" / "train" / "list.tsv"
PATHS = Registry("inference path")


def make_model_dir(config_path: Path, folder: Path, seed: int = 0) -> Path:
    """Random weights as a model directory. BatchNorm statistics are randomised too, so that the
    fused path has real statistics to fold and its cosine check means something."""
    config = load_config(config_path)
    torch.manual_seed(seed)
    embedder = build_embedder(config)
    generator = torch.Generator().manual_seed(seed)
    for module in embedder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    weights = {"backbone." + k: v for k, v in embedder.backbone.state_dict().items()}
    return save_model_dir(folder, weights, config, {"threshold": 0.5})


def make_workload() -> dict:
    """shape -> list of voice-like float32 arrays (every utterance a different voice)."""
    return {shape: [voice_like(seconds, SAMPLE_RATE, seed=100 * i + n) for n in range(count)]
            for i, (shape, (count, seconds)) in enumerate(SHAPES.items())}


def cpu_extensions() -> str:
    """The vector extensions that decide these figures (from /proc/cpuinfo; 'unknown' elsewhere)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return ",".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")
                    if f in flags) or "none"


def matmul_peak_gflops(repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a large square matmul on the current torch thread count."""
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * MATMUL_SIZE ** 3 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def embed(predictor, batch) -> np.ndarray:
    """The user-facing call: ``predict`` for one utterance, ``predict_batch`` for several."""
    if len(batch) == 1:
        return predictor.predict(batch[0], sample_rate=SAMPLE_RATE)[None]
    return predictor.predict_batch(batch, sample_rate=SAMPLE_RATE)


# ------------------------------------------------------------------ our inference paths
# Each builds a predictor from the random-weight model directory; ``workdir`` is a scratch folder.


@PATHS.register(name="eager")
def eager_path(model_dir, workdir, threads, calibration=None):
    return MVectorPredictor(model_dir, fuse_batchnorm=False)


@PATHS.register(name="default")
def default_path(model_dir, workdir, threads, calibration):
    """What a user gets without asking: MVectorPredictor(model_dir), i.e. backend 'auto'."""
    return default_predictor(model_dir, threads)


@PATHS.register(name="openvino-bf16")
def bf16_path(model_dir, workdir, threads, calibration):
    """The opt-in bfloat16 backend (on CPUs with bfloat16 units)."""
    return default_predictor(model_dir, threads, backend="openvino-bf16")


@PATHS.register(name="fused")
def fused_path(model_dir, workdir, threads, calibration):
    return MVectorPredictor(model_dir, fuse_batchnorm=True)


def _onnx_runtime_threads(backend, threads):
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    backend.session = ort.InferenceSession(str(backend.onnx_path), sess_options=options,
                                           providers=["CPUExecutionProvider"])


def _openvino_threads(backend, threads):
    backend.compile(str(backend.onnx_path), INFERENCE_NUM_THREADS=threads)


# The backends use their engine's default thread count; the bench pins --threads.
PIN_THREADS = {"onnx": _onnx_runtime_threads, "onnx-int8": _onnx_runtime_threads,
               "openvino": _openvino_threads, "openvino-int8": _openvino_threads}


def _exported_predictor(model_dir, workdir, threads, backend, calibration=None):
    # torch's exporter warns about torchvision operators it skips registering: noise here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    out_dir = Path(workdir) / backend
    export_model(model_dir, out_dir, formats=("onnx",), int8_calibration=calibration)
    predictor = MVectorPredictor(out_dir, backend=backend)
    PIN_THREADS[backend](predictor._backend, threads)
    return predictor


def _needs_calibration(calibration):
    if calibration is None:
        raise MVectorError("no --calibration audio (the training list of ../shared/data is used when present)")
    return calibration


@PATHS.register(name="onnx")
def onnx_path(model_dir, workdir, threads, calibration):
    return _exported_predictor(model_dir, workdir, threads, "onnx")


@PATHS.register(name="openvino")
def openvino_path(model_dir, workdir, threads, calibration):
    return _exported_predictor(model_dir, workdir, threads, "openvino")


@PATHS.register(name="onnx-int8")
def onnx_int8_path(model_dir, workdir, threads, calibration):
    return _exported_predictor(model_dir, workdir, threads, "onnx-int8", _needs_calibration(calibration))


@PATHS.register(name="openvino-int8")
def openvino_int8_path(model_dir, workdir, threads, calibration):
    return _exported_predictor(model_dir, workdir, threads, "openvino-int8", _needs_calibration(calibration))


def time_path(predictor, workload, repeats):
    """shape -> (median seconds per call, embeddings of the first call)."""
    results = {}
    for shape, batch in workload.items():
        first = embed(predictor, batch)  # warm-up
        times = [_seconds(lambda: embed(predictor, batch)) for _ in range(repeats)]
        results[shape] = (statistics.median(times), first)
    return results


def count_flops(predictor, workload) -> dict:
    """shape -> FLOPs of one call (matmuls and convolutions, as torch's flop counter counts)."""
    flops = {}
    for shape, batch in workload.items():
        with FlopCounterMode(display=False) as counter:
            embed(predictor, batch)
        flops[shape] = counter.get_total_flops()
    return flops


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def run_peer(peer_python, config_name, workload, repeats, threads):
    """The reference's figures (shape -> dict), or a dict with 'error' saying why there are none."""
    return run_peer_on_workload(peer_python, PEER_SCRIPT, workload, config_name, repeats, threads)


def bench_backbone(name, config_path, args, peak, workload):
    xrt = {}  # path -> shape -> xRT, for the ratios to the peer
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = make_model_dir(config_path, Path(workdir) / "model")
        # Model FLOPs are what the eager graph computes; every path is measured against them.
        flops = count_flops(eager_path(model_dir, workdir, args.threads), workload)
        for shape in SHAPES:
            figure(name, "model", shape, "GFLOP_per_call", f"{flops[shape] / 1e9:.3f}")
        eager = None
        for path in args.paths:
            try:
                predictor = PATHS.get_class(path)(model_dir, workdir, args.threads, args.calibration)
            except Exception as exc:  # e.g. an export that fails: the other paths still run
                reason = (str(exc).strip().splitlines() or [""])[0]
                print(f"note: {name} {path}: not measured: {type(exc).__name__}: {reason}", file=sys.stderr)
                continue
            timings = time_path(predictor, workload, args.repeats)
            xrt[path] = {}
            for shape, (seconds, embeddings) in timings.items():
                count, duration = SHAPES[shape]
                xrt[path][shape] = count * duration / seconds
                gflops = flops[shape] / seconds / 1e9
                figure(name, path, shape, "xRT", f"{xrt[path][shape]:.1f}")
                figure(name, path, shape, "GFLOPs", f"{gflops:.2f}")
                figure(name, path, shape, "peak_fraction", f"{gflops / peak:.3f}")
                if eager is not None:
                    figure(name, path, shape, "cosine_vs_eager", f"{min_cosine(embeddings, eager[shape]):.6f}")
            if path == "eager":
                eager = {shape: embeddings for shape, (_, embeddings) in timings.items()}
    if not args.peer_python:
        return
    peer = run_peer(args.peer_python, config_path.stem, workload, args.repeats, args.threads)
    if "error" in peer:
        print(f"note: {name}: no peer figures: {peer['error']}", file=sys.stderr)
        return
    summarised = {"default": [], "openvino-bf16": []}  # path -> its ratios, for the lowest
    for shape, result in peer.items():
        peer_xrt = result["audio_seconds"] / result["seconds"]
        figure(name, "peer", shape, "xRT", f"{peer_xrt:.1f}")
        figure(name, "peer", shape, "GFLOP_per_call", f"{result['flops'] / 1e9:.3f}")
        for path, by_shape in xrt.items():
            figure(name, path, shape, "ratio_vs_peer", f"{by_shape[shape] / peer_xrt:.2f}")
            if path in summarised:
                summarised[path].append(by_shape[shape] / peer_xrt)
    for path, ratios in summarised.items():
        if ratios:
            figure(name, path, "all", "lowest_ratio_vs_peer", f"{min(ratios):.2f}")


STARTUP = """
import sys, time
import numpy as np
start = time.perf_counter()
from mvector import MVectorPredictor
imported = time.perf_counter()
predictor = MVectorPredictor(backend=sys.argv[1])
loaded = time.perf_counter()
predictor.predict(np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1, 16000)
done = time.perf_counter()
print(imported - start, loaded - imported, done - loaded)
"""


def startup_figures(threads):
    """A fresh process per backend on the packaged default model; the first ``auto`` process only warms
    the cache (it converts the model for OpenVINO the first time ever), the second is measured."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    results = {}
    for backend in ("auto", "auto", "torch"):
        done = subprocess.run([sys.executable, "-c", STARTUP, backend], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(f"note: startup {backend}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results[backend] = dict(zip(("import_s", "load_s", "first_embedding_s"), map(float, done.stdout.split())))
    for backend, timings in results.items():
        for metric, seconds in timings.items():
            figure("startup", backend, "-", metric, f"{seconds:.3f}")


def main():
    configs = backbone_configs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(configs), choices=list(configs))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--peer-python", help="interpreter of a venv with the reference toolkit (mvector==1.1.7)")
    parser.add_argument("--calibration", default=str(TRAIN_LIST) if TRAIN_LIST.is_file() else None,
                        help="speech for the onnx-int8 path's calibration: a folder or list path<TAB>label "
                             f"(default: {TRAIN_LIST} when present)")
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    # Eager first: the other paths' cosines are against its embeddings.
    args.paths = [path for path in PATHS if path in args.paths]
    torch.set_num_threads(args.threads)
    figure("cpu", "isa", "-", "extensions", cpu_extensions())
    peak = matmul_peak_gflops()
    figure("matmul", "fp32", f"{MATMUL_SIZE}x{MATMUL_SIZE}", "peak_GFLOPs", f"{peak:.1f}")
    startup_figures(args.threads)
    workload = make_workload()
    for name in args.backbones:
        bench_backbone(name, configs[name], args, peak, workload)


if __name__ == "__main__":
    main()
