"""Inference backends: what turns a padded batch of waveforms into raw embeddings.

Every backend is built from a model directory and called as
``backend(waveforms[B, N] float32, lengths[B] int64) -> embeddings[B, E] float32`` (numpy in, numpy
out), with ``sample_rate``, ``embd_dim``, ``config``, ``state`` and ``fingerprint()``. The feature
front-end is inside each one, so the predictor never pairs weights with another front-end.
"""
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from mvector.device import choose_device
from mvector.errors import MVectorError, ModelMismatchError
from mvector.fileio import atomic_file, cache_dir
from mvector.inference.contract import (CONVERTED_FILES, FINGERPRINT_KEY, INPUT_NAMES, INT8_ONNX_FILE, ONNX_FILE,
                                        OUTPUT_NAME)
from mvector.model_dir import load_embedder, model_fingerprint, read_model_dir
from mvector.registry import Registry


logger = logging.getLogger(__name__)

BACKENDS = Registry("inference backend")


ONNX_INSTALL_HINT = "ONNX needs onnx, onnxscript and onnxruntime: pip install 'mvector-sv[onnx]'"
OPENVINO_INSTALL_HINT = "the OpenVINO backends need openvino, a dependency of mvector-sv: pip install openvino"


@BACKENDS.register(name="torch")
class TorchBackend:
    """The model directory's SpeakerEmbedder (features + backbone, eval mode) on the CPU or a GPU.

    ``fuse_batchnorm``: None (default) folds BatchNorms into the convolutions before them at load,
    keeping the model as it is, with a warning, if folding would change its outputs; True requires
    the folding; False keeps every BatchNorm.
    """

    def __init__(self, model_dir, use_gpu: bool = False, fuse_batchnorm=None):
        self.model_dir = Path(model_dir)
        self.device = choose_device(use_gpu)
        self.embedder, self.config, self.state = load_embedder(self.model_dir, self.device)
        if fuse_batchnorm is not False:
            try:
                self.embedder = _fused(self.embedder, self.device)
            except MVectorError as exc:
                if fuse_batchnorm:
                    raise
                warnings.warn(f"{self.model_dir}: {exc}")
        self.sample_rate = self.embedder.sample_rate
        self.embd_dim = self.embedder.embd_dim

    def fingerprint(self) -> str:
        return model_fingerprint(self.model_dir, self.config)

    def __call__(self, waveforms: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        step = self.embedder.utterances_per_pass(waveforms.shape[1], self.device)
        with torch.inference_mode():
            parts = [self._embed(waveforms[i: i + step], lengths[i: i + step])
                     for i in range(0, len(waveforms), step)]
        return np.concatenate(parts)

    def _embed(self, waveforms: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        # A batch without padding needs no masks: the backbones skip every masking step when lengths
        # is None (10-35 % of a CPU pass), and their outputs are the same.
        unpadded = bool((lengths == waveforms.shape[1]).all())
        lengths = None if unpadded else torch.from_numpy(np.ascontiguousarray(lengths)).to(self.device)
        embeddings = self.embedder(torch.from_numpy(np.ascontiguousarray(waveforms)).to(self.device), lengths)
        return embeddings.float().cpu().numpy()


def _fused(embedder, device):
    """The embedder with its BatchNorms folded into the convolutions before them (mvector.inference.batchnorm_fusion),
    checked on a padded batch of two noise utterances."""
    from mvector.inference.batchnorm_fusion import fuse_batchnorm, noise_batch

    waveforms, lengths = noise_batch((2.0, 1.5), embedder.sample_rate, seed=0)
    return fuse_batchnorm(embedder, (waveforms.to(device), lengths.to(device)))


def graph_feeds(waveforms: np.ndarray, lengths: np.ndarray) -> dict:
    """The inputs of an exported or converted graph, by their names in ``contract``."""
    return dict(zip(INPUT_NAMES, (waveforms, lengths.astype(np.int64, copy=False))))


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MVectorError(f"onnxruntime is not installed; {ONNX_INSTALL_HINT}") from None
    return onnxruntime


class ExportedGraphBackend:
    """An exported graph (``mvector.inference.export``, front-end inside) run by an inference engine; the
    subclasses name the engine.

    ``onnx_path`` defaults to ``default_file`` in the model directory. The directory's weights,
    config and state are still read: they validate the front-end and give the fingerprint, so
    voiceprints enrolled with any backend stay comparable. The graph must record that same
    fingerprint (``mvector.inference.export`` writes it), so a graph of other weights, e.g. after retraining
    into the same folder, is refused rather than mixed into a voiceprint library.
    """

    default_file = ONNX_FILE
    how_to_write = "python export_model.py --model_dir {model_dir} --out_dir {exported} --formats onnx"

    def _exported(self) -> Path:
        return Path("exported") / self.model_dir.name  # beside the user, never inside an installed package

    def _how_to_write(self) -> str:
        return self.how_to_write.format(model_dir=self.model_dir, exported=self._exported())

    def __init__(self, model_dir, use_gpu: bool = False, onnx_path=None):
        self.model_dir = Path(model_dir)
        self.config, _, self.state = read_model_dir(self.model_dir)
        self.onnx_path = Path(onnx_path) if onnx_path is not None else self.model_dir / self.default_file
        if not self.onnx_path.is_file():
            raise MVectorError(f"{self.onnx_path}: ONNX file not found; export the model with "
                               f"{self._how_to_write()}, then give {self._exported()} as the model directory "
                               f"(from Python, MVectorPredictor(onnx_path=FILE) also takes the file itself)")
        inputs, outputs, self.embd_dim, recorded = self._open(use_gpu)
        self._fingerprint = model_fingerprint(self.model_dir, self.config)
        if recorded != self._fingerprint:
            source = (f"was exported from another model (fingerprint {recorded})" if recorded else
                      "records no source model (exported before mvector recorded one)")
            raise ModelMismatchError(f"{self.onnx_path} {source}, not from the weights in {self.model_dir} "
                                     f"(fingerprint {self._fingerprint}); write it again with "
                                     f"{self._how_to_write()}")
        if inputs != INPUT_NAMES or outputs != (OUTPUT_NAME,):
            raise ModelMismatchError(f"{self.onnx_path}: expected inputs {INPUT_NAMES} and output {OUTPUT_NAME!r}, "
                                     f"got inputs {inputs} and outputs {outputs}; was it written by mvector.inference.export?")
        if not isinstance(self.embd_dim, int):
            raise ModelMismatchError(f"{self.onnx_path}: the embedding size is not fixed in the graph")
        self.sample_rate = self.config["dataset_conf"]["sample_rate"]  # the featurizer's (checked when loaded)

    def _open(self, use_gpu: bool) -> tuple:
        """Load ``self.onnx_path``; return (input names, output names, embedding size or None, the
        graph's FINGERPRINT_KEY metadata or None)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        return self._fingerprint


@BACKENDS.register(name="onnx")
class OnnxBackend(ExportedGraphBackend):
    """The exported ``model.onnx`` run by ONNX Runtime, on the CPU or (``use_gpu``) CUDA."""

    def _open(self, use_gpu: bool) -> tuple:
        ort = import_onnxruntime()
        provider = "CUDAExecutionProvider" if use_gpu else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise MVectorError(f"use_gpu={use_gpu}: ONNX Runtime has no {provider} here "
                               f"(available: {', '.join(ort.get_available_providers())})")
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), providers=[provider])
        except Exception as exc:  # corrupt or foreign file: name it
            raise ModelMismatchError(f"{self.onnx_path}: cannot load the ONNX model ({exc})") from None
        outputs = self.session.get_outputs()
        embd_dim = outputs[0].shape[1] if len(outputs[0].shape) == 2 else None
        recorded = self.session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)
        return tuple(i.name for i in self.session.get_inputs()), tuple(o.name for o in outputs), embd_dim, recorded

    def __call__(self, waveforms: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], graph_feeds(waveforms, lengths))[0]


class Int8Graph:
    """Mixin: the int8 graph ``model.int8.onnx`` (``mvector.inference.quantize``: convolutions in int8,
    calibrated on speech, checked at export to stay within cosine 0.99 of float32 on held-out
    calibration files)."""

    default_file = INT8_ONNX_FILE
    how_to_write = ("python export_model.py --model_dir {model_dir} --out_dir {exported} --formats onnx "
                    "--int8_calibration TRAINING_AUDIO")


@BACKENDS.register(name="onnx-int8")
class Int8OnnxBackend(Int8Graph, OnnxBackend):
    """The int8 graph run by ONNX Runtime."""


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise MVectorError(f"openvino is not installed; {OPENVINO_INSTALL_HINT}") from None
    return openvino


_openvino_core = None


def openvino_core():
    """The process's one OpenVINO Core: every model is read and compiled through it, so compiled
    models never outlive the Core that made them."""
    global _openvino_core
    ov = import_openvino()  # every time: a clear error where it is not installed
    if _openvino_core is None:
        _openvino_core = ov.Core()
    return _openvino_core


class OpenVinoRunner:
    """Runs a model read by OpenVINO on the CPU.

    Inference precision is float32 unless ``compile`` is told otherwise: on CPUs with bf16 units
    OpenVINO would compute in bf16 by default, and the embeddings would drift from the weights' own
    (the front-end's most: see ``Bf16OpenVinoBackend``). Its cache of kernels
    prepared per input shape is kept small: at the default 5,000 shapes a server fed recordings of
    every length grew from 320 MB to 870 MB in 300 calls; at 16 it stays near 530 MB, and a
    repeated shape (the predictor's windows) costs the same.
    """

    compile_options = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                       "CPU_RUNTIME_CACHE_CAPACITY": 16}

    def compile(self, model, **options) -> None:
        """Compile ``model`` (read by OpenVINO, or a file) for the CPU with ``compile_options`` and
        any extra ``options`` (e.g. ``INFERENCE_NUM_THREADS``, ``CACHE_DIR``)."""
        self._compiled = openvino_core().compile_model(model, "CPU", {**self.compile_options, **options})
        # One infer request reused under a lock: a request is not thread-safe, and the server calls
        # the predictor from several threads.
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def outputs(self, *inputs) -> list:
        """Every output of the model on ``inputs`` (fed by position; copies, safe from the next call)."""
        with self._lock:
            result = self._request.infer(dict(enumerate(inputs)))
        return [result[i] for i in range(len(result))]

    def __call__(self, waveforms: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.outputs(waveforms, lengths.astype(np.int64, copy=False))[0]


@BACKENDS.register(name="openvino")
class OpenVinoBackend(OpenVinoRunner, ExportedGraphBackend):
    """The exported ``model.onnx`` compiled by OpenVINO for the CPU, with the same embeddings as ONNX
    Runtime (``OpenVinoRunner`` says how it runs)."""

    def _open(self, use_gpu: bool) -> tuple:
        if use_gpu:
            raise MVectorError("use_gpu=True: the OpenVINO backends run on the CPU; "
                               "use backend='torch' or 'onnx' on a CUDA GPU")
        core = openvino_core()  # a clear error where OpenVINO is not installed, before the file is read
        try:
            model = core.read_model(str(self.onnx_path))
            self.compile(model)
        except Exception as exc:  # corrupt or foreign file: name it
            raise ModelMismatchError(f"{self.onnx_path}: cannot load the ONNX model ({exc})") from None
        last = model.outputs[0].get_partial_shape()
        embd_dim = last[1].get_length() if last.rank.is_static and len(last) == 2 and last[1].is_static else None
        key = ["framework", FINGERPRINT_KEY]  # where OpenVINO's ONNX reader puts the metadata
        recorded = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
        return (tuple(i.get_any_name() for i in model.inputs), tuple(o.get_any_name() for o in model.outputs),
                embd_dim, recorded)


@BACKENDS.register(name="openvino-int8")
class Int8OpenVinoBackend(Int8Graph, OpenVinoBackend):
    """The int8 graph compiled by OpenVINO (int8 kernels where the CPU has them, e.g. VNNI)."""


class OpenVinoUnavailable(MVectorError):
    """OpenVINO is not installed here, or cannot convert this model faithfully: torch runs it instead."""


# Beside a converted model's cache folder: why converting that model failed, so later loads fall back
# to torch at once instead of trying again (a new OpenVINO version, another folder, tries again).
FAILED_SUFFIX = ".failed"


class ConvertedOpenVinoBackend:
    """The model directory's embedder converted for OpenVINO straight from torch (no export step),
    kept in the cache folder under the model's fingerprint and OpenVINO's version: the first use of
    a model converts it once (logged), every later one reads the converted model and OpenVINO's
    compiled blob. A conversion whose embeddings drift from torch's is refused, not cached.

    ``stages``: the graph parts converted (``mvector.inference.export.GRAPH_PARTS``), run in turn (each
    one's outputs are the next one's inputs), with the inference precision each is compiled in; here
    the whole embedder in float32. ``cache_suffix`` keeps other stages in a folder of their own.
    """

    stages = (("embedder", "f32"),)
    cache_suffix = ""

    def __init__(self, model_dir, use_gpu: bool = False):
        if use_gpu:
            raise MVectorError("use_gpu=True: the OpenVINO backends run on the CPU; use backend='torch' on a GPU")
        self.model_dir = Path(model_dir)
        self.config, _, self.state = read_model_dir(self.model_dir)  # a broken model directory is its own error
        self._fingerprint = model_fingerprint(self.model_dir, self.config)
        try:
            ov = import_openvino()
        except MVectorError as exc:
            raise OpenVinoUnavailable(str(exc)) from None
        folder = cache_dir() / "openvino" / f"{self._fingerprint}-{ov.__version__.split('-')[0]}{self.cache_suffix}"
        failed = folder.with_name(folder.name + FAILED_SUFFIX)
        if failed.is_file():  # converting this model failed before: say why again, do not spend minutes on it
            raise OpenVinoUnavailable(failed.read_text(encoding="utf-8").strip() + f" (remembered in {failed})")
        self.converted_paths = [folder / CONVERTED_FILES[part] for part, _ in self.stages]
        if not self._is_converted():
            self._convert(folder)
        try:
            models = self._read_converted()
        except Exception:  # a damaged cache entry (a disk that filled up): it is ours to convert again
            shutil.rmtree(folder, ignore_errors=True)
            self._convert(folder)
            models = self._read_converted()
        self._cache = folder / "compiled"
        self._runners = [OpenVinoRunner() for _ in self.stages]
        self.compile(models)
        self.sample_rate = self.config["dataset_conf"]["sample_rate"]  # the featurizer's (checked when loaded)
        self.embd_dim = models[-1].outputs[0].get_partial_shape()[1].get_length()

    def _is_converted(self) -> bool:
        return all(path.is_file() for path in self.converted_paths)

    def _read_converted(self) -> list:
        return [openvino_core().read_model(str(path)) for path in self.converted_paths]

    def compile(self, models=None, **options) -> None:
        """Compile each stage (``models`` read by OpenVINO; None: the converted files) in its precision
        with any extra OpenVINO ``options`` (the benchmarks pin ``INFERENCE_NUM_THREADS``)."""
        models = [str(path) for path in self.converted_paths] if models is None else models
        for runner, (_, precision), model in zip(self._runners, self.stages, models):
            runner.compile(model, INFERENCE_PRECISION_HINT=precision, CACHE_DIR=str(self._cache), **options)

    def __call__(self, waveforms: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        outputs = (waveforms, lengths.astype(np.int64, copy=False))
        for runner in self._runners:
            outputs = runner.outputs(*outputs)
        return outputs[0]

    def fingerprint(self) -> str:
        return self._fingerprint

    def _convert(self, folder: Path) -> None:
        from mvector.inference.export import check_exportable, converted_for_openvino

        # Loaded outside the fallback: weights that do not fit their config are an error for any backend.
        embedder, _, _ = load_embedder(self.model_dir, "cpu")
        try:
            check_exportable(embedder)
        except MVectorError as exc:
            raise OpenVinoUnavailable(str(exc)) from None
        logger.warning("%s: converting the model for OpenVINO, once (it is then read from %s)",
                       self.model_dir, folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            try:
                for part, _ in self.stages:
                    converted_for_openvino(embedder, self._fingerprint, staging / CONVERTED_FILES[part], part)
            except Exception as exc:  # an operator OpenVINO lacks, embeddings that drift: torch still runs it
                reason = f"converting it failed ({' '.join(str(exc).split()) or type(exc).__name__})"
                with contextlib.suppress(OSError), atomic_file(folder.with_name(folder.name + FAILED_SUFFIX)) as fh:
                    fh.write(reason + "\n")  # remembered per model and OpenVINO version
                raise OpenVinoUnavailable(reason) from None
            try:
                os.replace(staging, folder)
            except OSError:  # another process converted it meanwhile: theirs serves
                if not self._is_converted():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@BACKENDS.register(name="openvino-bf16")
class Bf16OpenVinoBackend(ConvertedOpenVinoBackend):
    """The model converted for OpenVINO as two graphs, the feature front-end computed in float32 and
    the backbone in bfloat16: on a CPU with bfloat16 units (AVX-512 BF16 or AMX) faster than float32
    (the README gives the figures), with embeddings within cosine 0.999 of it, but not the weights'
    own arithmetic. The front-end stays float32 because a frame's DFT in bfloat16 swamps its quiet
    frequency bins in the rounding error of its loud ones (log-mel features off by up to 2 on speech);
    it stays in OpenVINO because torch's idle threads, spinning after each call, would slow the
    backbone's. A CPU without bfloat16 units is an error, not a silent float32."""

    stages = (("features", "f32"), ("backbone", "bf16"))
    cache_suffix = "-split"

    def __init__(self, model_dir, use_gpu: bool = False):
        if not use_gpu:  # ConvertedOpenVinoBackend names the GPU error
            capabilities = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in capabilities:
                raise MVectorError(f"backend='openvino-bf16': this CPU has no bfloat16 units (OpenVINO's CPU "
                                   f"capabilities: {', '.join(capabilities)}); use backend='auto' (float32)")
        super().__init__(model_dir, use_gpu=use_gpu)


@BACKENDS.register(name="auto")
def fastest_backend(model_dir, use_gpu: bool = False):
    """What runs unless a backend is named: on the CPU the model converted for OpenVINO (the fastest
    path with the same embeddings, bench/infer_cpu.py), else torch: on a GPU, or with one log line
    when OpenVINO is not installed or cannot convert this model."""
    if use_gpu:
        return TorchBackend(model_dir, use_gpu=True)
    try:
        return ConvertedOpenVinoBackend(model_dir)
    except OpenVinoUnavailable as exc:
        logger.warning("%s: running it with torch instead of OpenVINO: %s", model_dir, exc)
    return TorchBackend(model_dir)
