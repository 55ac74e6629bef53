"""Benchmark: peak memory of embedding one 10-minute recording with ``MVectorPredictor.predict``.

    python bench/memory.py [--config configs/cam++.yml] [--minutes 10] [--threads 2]
                           [--backend auto|torch|openvino-bf16|onnx|openvino] [--varied 300]

Prints ``predict_10min_peak_rss <MB> MB``: the peak resident set size (``resource.getrusage``
``ru_maxrss``) of a fresh interpreter that imports mvector, loads a random-weight model directory
of ``--config`` (the default model's recipe) and embeds a synthetic voice-like 16 kHz WAV file of
``--minutes`` minutes from disk. Target: under 1 GB. Also ``predictor_ready_rss`` (resident size
once the predictor is built, before ``predict``) and ``predict_10min_seconds`` (that one call).
Then, as a server sees them, ``--varied`` recordings of as many different lengths (0.5-10 s) go
through ``predict`` one by one, and ``after_300_varied_lengths_rss`` is the resident size after
them: an engine that keeps something per input shape shows here. ``--backend`` picks the inference
backend; for ``onnx`` and ``openvino`` the model directory is exported first (``mvector.inference.export``),
for ``auto`` (the default path) and ``openvino-bf16`` it is converted first, into a cache folder of
this run's own.

Three processes keep the figure honest: this one imports nothing heavy, a helper writes the WAV
file and model directory, and the measured interpreter is started afresh, so that no peak of the
preparation (or of a parent's address space, which Linux may carry into a child's ru_maxrss
across fork and exec) is counted.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("auto", "torch", "openvino-bf16", "onnx", "openvino")
EXPORTED = ("onnx", "openvino")  # read model.onnx; the others but torch convert the model into the cache
TARGET_MB = 1024
SAMPLE_RATE = 16000


def prepare(folder: Path, config: Path, minutes: float, backend: str) -> None:
    """Write ``folder/speech.wav`` and a random-weight model directory ``folder/model`` (with its
    exported ``model.onnx`` for the exported-graph backends, converted for the converting ones)."""
    import soundfile as sf
    import torch

    from mvector.config import load_config
    from mvector.embedder import build_embedder
    from mvector.model_dir import save_model_dir
    from synthetic_voice import voice_like

    sf.write(str(folder / "speech.wav"), voice_like(60 * minutes, SAMPLE_RATE, seed=0), SAMPLE_RATE, subtype="PCM_16")
    loaded = load_config(config)
    torch.manual_seed(0)
    weights = {"backbone." + k: v for k, v in build_embedder(loaded).backbone.state_dict().items()}
    save_model_dir(folder / "model", weights, loaded, {"threshold": 0.5})
    if backend in EXPORTED:
        from mvector.inference.export import export_model

        export_model(folder / "model", folder / "model", "onnx")
    elif backend != "torch":
        from mvector.inference.predictor import MVectorPredictor

        MVectorPredictor(folder / "model", backend=backend)


def resident_mb() -> float:
    """Current resident set size (VmRSS) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(folder: Path, threads: int, backend: str, varied: int) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    from mvector.inference.predictor import MVectorPredictor

    torch.set_num_threads(threads)
    predictor = MVectorPredictor(folder / "model", backend=backend)
    ready = resident_mb()
    start = time.perf_counter()
    embedding = predictor.predict(str(folder / "speech.wav"))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    from synthetic_voice import voice_like  # only now: scipy's import would count in the figures above

    lengths = np.random.default_rng(0).choice(np.arange(8000, 160000), size=varied, replace=False)
    for i, length in enumerate(lengths):
        predictor.predict(voice_like(length / SAMPLE_RATE, SAMPLE_RATE, seed=i), sample_rate=SAMPLE_RATE)
    return {"peak_mb": peak, "ready_mb": ready, "seconds": seconds, "after_varied_mb": resident_mb(),
            "finite": bool(np.isfinite(embedding).all()), "dim": int(embedding.shape[0])}


def run_step(*args) -> str:
    """This script in a fresh interpreter; its stdout, or exit with its error."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *map(str, args)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench/memory.py {args[0]} failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "cam++.yml")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="default: auto, what a user gets")
    parser.add_argument("--varied", type=int, default=300, help="recordings of distinct lengths embedded afterwards")
    parser.add_argument("--step", choices=["prepare", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.folder, args.config, args.minutes, args.backend)
        return
    if args.step == "measure":
        print(json.dumps(measure(args.folder, args.threads, args.backend, args.varied)))
        return
    if not args.config.is_file():
        parser.error(f"--config: no such file: {args.config}")
    if not args.minutes > 0 or args.threads < 1 or args.varied < 0:
        parser.error("--minutes must be > 0, --threads >= 1 and --varied >= 0")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MVECTOR_CACHE"] = str(Path(folder) / "cache")  # the conversion of this run's random model
        run_step("--step", "prepare", "--folder", folder, "--config", args.config, "--minutes", args.minutes,
                 "--backend", args.backend)
        result = json.loads(run_step("--step", "measure", "--folder", folder, "--threads", args.threads,
                                     "--backend", args.backend, "--varied", args.varied).strip().splitlines()[-1])
    if not result["finite"]:
        sys.exit("predict returned a non-finite embedding")
    label = f"{args.minutes:g}min"
    print(f"predictor_ready_rss {result['ready_mb']:.0f} MB")
    print(f"predict_{label}_peak_rss {result['peak_mb']:.0f} MB")
    print(f"predict_{label}_seconds {result['seconds']:.2f} s")
    print(f"after_{args.varied}_varied_lengths_rss {result['after_varied_mb']:.0f} MB")
    if result["peak_mb"] >= TARGET_MB:
        print(f"note: peak RSS {result['peak_mb']:.0f} MB is over the {TARGET_MB} MB target", file=sys.stderr)


if __name__ == "__main__":
    main()
