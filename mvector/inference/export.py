"""Export a model directory's embedder, feature front-end included, for deployment.

Formats (``EXPORT_FORMATS``): ``onnx`` (``model.onnx``, through ``torch.export`` and the dynamo ONNX
exporter; run it with ``MVectorPredictor(model_dir=out_dir, backend='onnx')``), ``torchscript``
(``model.torchscript.pt``, ``torch.jit.trace``; ``torch.jit.load`` runs it) and ``pt2`` (``model.pt2``,
a ``torch.export`` program; ``torch.export.load(path).module()`` runs it). Every graph maps
``waveforms[B, N]`` float32 (mono at the config's sample rate, loudness-normalised as the config says)
and ``lengths[B]`` int64 to raw embeddings ``[B, E]``, with batch and time axes dynamic. The time axis
takes any length from MIN_DURATION on (every shipped backbone needs less: Res2Net 5 frames, the others
one); a backbone with a larger ``min_frames`` raises that minimum. The output
directory also receives the model directory's files (model.pth, config.yml, model.state), so it is a
complete model directory: config and state travel with the graphs.

Each written graph is loaded back and checked against PyTorch on a batch of lengths other than
those it was traced with.
"""
import logging
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.fx.experimental import _config as fx_config

from mvector.errors import ConfigError, MVectorError
from mvector.inference.backends import ONNX_INSTALL_HINT, import_onnxruntime, import_openvino, openvino_core
from mvector.inference.batchnorm_fusion import noise_batch
from mvector.inference.contract import FINGERPRINT_KEY, INPUT_NAMES, MIN_DURATION, ONNX_FILE, OUTPUT_NAME
from mvector.model_dir import CONFIG_FILE, MODEL_FILE, STATE_FILE, load_embedder, model_fingerprint
from mvector.registry import Registry


EXPORT_FORMATS = Registry("export format")
DEFAULT_FORMATS = ("onnx", "torchscript")
TORCHSCRIPT_FILE = "model.torchscript.pt"
TORCH_ONNX_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"
PT2_FILE = "model.pt2"
# An exported graph whose embeddings are further than this from PyTorch's is a failed export.
MIN_COSINE = 0.9999
# Traced with one batch, checked with another: different batch size and lengths catch axes frozen by tracing.
TRACE_SECONDS = (2.0, 1.3)
# Without it torch.export specialises intermediate sizes that are 1 (or not) in the traced example (CAM++'s
# count of 100-frame segments, Res2Net's 48x-strided time axis) and guards on them, freezing them.
SIZE_OBLIVIOUS = {"backed_size_oblivious": True}
CHECK_SECONDS = (3.1, MIN_DURATION, 2.2)


FEATURE_NAMES = ("features", "frame_lengths")
# What a graph may hold: part -> (its module in the embedder, input names, output names). Exports write the
# whole embedder; a backend that computes the front-end and the backbone apart converts them one by one.
GRAPH_PARTS = {
    "embedder": (lambda embedder: embedder, INPUT_NAMES, (OUTPUT_NAME,)),
    "features": (lambda embedder: embedder.featurizer, INPUT_NAMES, FEATURE_NAMES),
    "backbone": (lambda embedder: embedder.backbone, FEATURE_NAMES, (OUTPUT_NAME,)),
}


def _time_axis_range(program):
    """The value range torch.export settled on for the time axis of the graph's first input."""
    first = program.graph_signature.user_inputs[0]
    placeholder = next(node for node in program.graph.nodes if node.op == "placeholder" and node.name == first)
    return program.range_constraints[placeholder.meta["val"].shape[1].node.expr]


def _rows(tensor):
    return torch.as_tensor(np.asarray(tensor), dtype=torch.float32).flatten(1)


class _Exporter:
    """Exports one embedder, or one ``part`` of it (``GRAPH_PARTS``); the torch.export program is made
    once and shared by onnx and pt2."""

    def __init__(self, embedder, fingerprint: str, part: str = "embedder"):
        self.embedder = embedder
        self.fingerprint = fingerprint  # of the model directory, recorded in the ONNX graph
        self.sample_rate = embedder.sample_rate
        module_of, self.input_names, self.output_names = GRAPH_PARTS[part]
        self.module = module_of(embedder)
        self.example = noise_batch(TRACE_SECONDS, self.sample_rate, seed=0)
        self.check = noise_batch(CHECK_SECONDS, self.sample_rate, seed=1)
        self.frames_in = self.input_names != INPUT_NAMES
        if self.frames_in:
            with torch.no_grad():  # not inference_mode: torch.export cannot trace inference tensors
                self.example, self.check = (embedder.featurizer(*batch) for batch in (self.example, self.check))
        with torch.inference_mode():
            reference = self.module(*self.check)
        self.reference = _rows(reference[0] if isinstance(reference, tuple) else reference)
        self._program = None

    def min_samples(self) -> int:
        """Shortest waveform the graph must take: MIN_DURATION, or more where the backbone needs more frames."""
        return max(math.ceil(MIN_DURATION * self.sample_rate), self.embedder.min_samples())

    def program(self):
        check_exportable(self.embedder)
        if self._program is None:
            # DYNAMIC dims: torch infers the constraints the graph implies (true for every length from the
            # minimum on) instead of failing on guards it cannot prove; it still fails if an axis is frozen.
            batch = torch.export.Dim.DYNAMIC(min=1)
            shortest = self.min_samples()
            if self.frames_in:
                shortest = self.embedder.featurizer.num_frames(shortest)
            shapes = ({0: batch, 1: torch.export.Dim.DYNAMIC(min=shortest)}, {0: batch})
            with fx_config.patch(**SIZE_OBLIVIOUS):
                program = torch.export.export(self.module, self.example, dynamic_shapes=shapes, strict=False)
            needed = _time_axis_range(program).lower
            if needed > shortest:
                raise MVectorError(f"the exported graph only takes {self.input_names[0]} {needed} long, "
                                   f"but {type(self.embedder.backbone).__name__} must take {shortest}")
            self._program = program
        return self._program

    def verify(self, path: Path, output) -> None:
        """Refuse a graph whose first output (the embeddings, or the front-end's features) on the check
        batch is not within MIN_COSINE of PyTorch's, row by row."""
        got = _rows(output)
        if got.shape != self.reference.shape or not torch.isfinite(got).all():
            raise MVectorError(f"{path}: the exported graph returned shape {tuple(got.shape)}, expected "
                               f"{tuple(self.reference.shape)} finite values")
        cosine = torch.nn.functional.cosine_similarity(got, self.reference, dim=1).min().item()
        if cosine < MIN_COSINE:
            raise MVectorError(f"{path}: the exported graph disagrees with PyTorch (cosine {cosine:.6f} "
                               f"< {MIN_COSINE})")


@EXPORT_FORMATS.register(name="onnx")
def export_onnx(exporter: _Exporter, out_dir: Path) -> Path:
    ort = import_onnxruntime()
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise MVectorError(f"{module} is not installed; {ONNX_INSTALL_HINT}") from None
    path = out_dir / ONNX_FILE
    # torch's exporter logs that torchvision's operators cannot be registered without torchvision: a
    # speaker model uses none of them, so the four lines would only alarm.
    registration = logging.getLogger(TORCH_ONNX_REGISTRATION_LOGGER)
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Raised inside torch's own exporter (its pytree specs), nothing a caller can act on.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated", category=FutureWarning)
            program = torch.onnx.export(exporter.program(), exporter.example, input_names=list(exporter.input_names),
                                        output_names=list(exporter.output_names), dynamo=True, verbose=False)
    finally:
        registration.setLevel(level)
    program.model.metadata_props[FINGERPRINT_KEY] = exporter.fingerprint
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    waves, lengths = exporter.check
    try:
        output = session.run(None, dict(zip(exporter.input_names, (waves.numpy(), lengths.numpy()))))[0]
    except Exception as exc:  # ONNX Runtime's own error types: a graph that only runs at the traced sizes
        path.unlink(missing_ok=True)
        backbone = type(exporter.embedder.backbone).__name__
        raise MVectorError(f"{backbone} does not export to ONNX yet: the exported graph fails on a batch of other "
                           f"lengths than the traced one ({' '.join(str(exc).split())[:160]}); nothing was "
                           "written. Use the torch backend for this model") from None
    exporter.verify(path, output)
    return path


@EXPORT_FORMATS.register(name="torchscript")
def export_torchscript(exporter: _Exporter, out_dir: Path) -> Path:
    path = out_dir / TORCHSCRIPT_FILE
    with warnings.catch_warnings():
        # Tracing warns at the Python-side input checks it cannot record and that torch.jit is
        # deprecated (the pt2 format is its successor); the check below is what counts.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        traced = torch.jit.trace(exporter.embedder, exporter.example, check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        exporter.verify(path, loaded(*exporter.check))
    return path


@EXPORT_FORMATS.register(name="pt2")
def export_pt2(exporter: _Exporter, out_dir: Path) -> Path:
    path = out_dir / PT2_FILE
    torch.export.save(exporter.program(), str(path))
    with torch.inference_mode():
        exporter.verify(path, torch.export.load(str(path)).module()(*exporter.check))
    return path


def parse_formats(formats) -> list:
    """``'onnx,torchscript'`` or a list of names -> validated list of format names."""
    names = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"no export format given; valid formats: {', '.join(EXPORT_FORMATS)}")
    for name in names:
        EXPORT_FORMATS.get_class(name, where="export: ")
    return list(dict.fromkeys(names))


def check_exportable(embedder) -> None:
    """MVectorError at once for a front-end or backbone whose graph does not export (their ``exportable``)."""
    featurizer, backbone = embedder.featurizer.featurizer, embedder.backbone
    if not featurizer.exportable:
        raise MVectorError(featurizer.export_refusal)
    if not getattr(backbone, "exportable", True):
        raise MVectorError(f"{type(backbone).__name__} does not export to ONNX or OpenVINO yet: its exported graph "
                           "only takes the traced length; nothing was written. Use the torch backend for this model")


def converted_for_openvino(embedder, fingerprint: str, path, part: str = "embedder") -> Path:
    """``embedder`` (of the model whose fingerprint is given), or a ``part`` of it (``GRAPH_PARTS``),
    converted by OpenVINO from its torch.export program (no ONNX in between; through ONNX where
    OpenVINO's torch front-end lacks an operator, as for the LSTM's scan), checked against torch like
    every export and saved as ``path`` (.xml and .bin)."""
    ov = import_openvino()
    exporter = _Exporter(embedder, fingerprint, part)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as scratch:
        # Raised inside torch's own exporter (its pytree specs), nothing a caller can act on.
        warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated", category=FutureWarning)
        try:
            model = ov.convert_model(exporter.program())
        except MVectorError:
            raise
        except Exception:  # OpenVINO's conversion failures have no common type; ONNX's Scan it reads
            model = ov.convert_model(str(export_onnx(exporter, Path(scratch))))
        compiled = openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        waves, lengths = exporter.check
        exporter.verify(path, compiled.create_infer_request().infer({0: waves.numpy(), 1: lengths.numpy()})[0])
        ov.save_model(model, str(path), compress_to_fp16=False)
    return Path(path)


def export_model(model_dir, out_dir, formats=DEFAULT_FORMATS, int8_calibration=None) -> dict:
    """Export ``model_dir`` into ``out_dir`` in each of ``formats``; returns ``{format: path}``.

    ``int8_calibration`` (a folder or list of speech, ``mvector.inference.quantize``) also writes the int8 ONNX
    graph, returned as ``'onnx-int8'``; it needs the ``onnx`` format.
    """
    names = parse_formats(formats)
    if int8_calibration is not None and "onnx" not in names:
        raise ConfigError("int8 quantization starts from the float32 ONNX graph: add 'onnx' to the formats")
    embedder, config, _ = load_embedder(model_dir, "cpu")
    check_exportable(embedder)  # before anything is written
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != model_dir.resolve():
        for name in (MODEL_FILE, CONFIG_FILE, STATE_FILE):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, out_dir / name)
    exporter = _Exporter(embedder, model_fingerprint(model_dir, config))
    written = {name: EXPORT_FORMATS[name](exporter, out_dir) for name in names}
    if int8_calibration is not None:
        from mvector.inference.quantize import quantize_onnx
        written["onnx-int8"], _ = quantize_onnx(out_dir, int8_calibration)
    return written
