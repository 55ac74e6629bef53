"""Int8 ONNX: an exported model's convolutions quantized statically, calibrated on real speech.

ONNX Runtime's QDQ format: per-channel int8 weights, uint8 activations whose ranges are measured on
calibration audio. Only ``Conv`` nodes are quantized: they hold nearly all of a backbone's work, while
the Fbank front-end (DFT, mel projection, log), the first convolution, the pooling layer and the
embedding layer stay float32, where 8 bits would cost accuracy and save little time.

The result is checked before it is written: on held-out calibration utterances, the int8 graph's
embeddings must keep a cosine of at least ``MIN_COSINE`` to the float32 graph's, or nothing is
written and the error names the cosine reached. Run it with ``MVectorPredictor(model_dir,
backend='onnx-int8')`` (ONNX Runtime) or ``backend='openvino-int8'`` (OpenVINO, which reads the same
QDQ graph).
"""
import os
import tempfile
from pathlib import Path

import numpy as np

from mvector.audio import AUDIO_EXTENSIONS
from mvector.errors import ConfigError, MVectorError
from mvector.fileio import fsync_dir
from mvector.inference.backends import ONNX_INSTALL_HINT, graph_feeds
from mvector.inference.contract import FINGERPRINT_KEY, INT8_ONNX_FILE, ONNX_FILE
from mvector.inference.predictor import MVectorPredictor
from mvector.lists import read_labelled_list


# Lowest cosine between int8 and float32 embeddings of a held-out utterance that is accepted.
MIN_COSINE = 0.99
# Calibration utterances are cropped to this: ranges settle within seconds, and the cost grows with length.
MAX_SECONDS = 6.0
MIN_FILES = 4
# Calibration files by default: on the ECAPA-TDNN model 64 training files moved dev EER by 0.11
# points (4.43 % -> 4.54 %, whole-file embeddings), 192 by 0.07, at a still-short export.
CALIBRATION_FILES = 192
POOLING_WEIGHTS = "backbone.pooling."


def calibration_files(source, max_files: int = CALIBRATION_FILES) -> list:
    """Audio paths from a folder (searched recursively) or a list ``path<TAB>label`` (paths relative
    to the list's folder), at most ``max_files`` spread evenly over it."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    elif source.is_file():
        paths = read_labelled_list(source)[0]
    else:
        raise ConfigError(f"int8 calibration audio not found: {source} (give a folder of audio or a list "
                          f"path<TAB>label)")
    if len(paths) < MIN_FILES:
        raise ConfigError(f"{source}: int8 calibration needs at least {MIN_FILES} audio files, found {len(paths)}")
    step = max(1, len(paths) // max_files)
    return paths[::step][:max_files]


def _waveforms(predictor, paths) -> list:
    """Calibration utterances as the model hears them (``predictor.load``: its rate, loudness and
    VAD); files that cannot be used are skipped, as long as enough remain."""
    waves, failures = [], []
    for path in paths:
        try:
            wav = predictor.load(path)
        except MVectorError as exc:
            failures.append(str(exc))
            continue
        waves.append(wav[: int(MAX_SECONDS * predictor.sample_rate)])
    if len(waves) < MIN_FILES:
        raise ConfigError(f"int8 calibration: only {len(waves)} of {len(paths)} files usable (need {MIN_FILES}); "
                          f"first problem: {failures[0] if failures else 'none'}")
    return waves


def float_convs(model) -> list:
    """Names of the Conv nodes kept in float32: the first (it reads the log-mel features, whose range is
    wide) and the pooling layer's (its attention logits pick the frames the embedding is made of).
    Found by weight name, which the exporter keeps from the module path (``backbone.pooling....``)."""
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    if not convs:
        return []
    pooling = [node.name for node in convs if len(node.input) > 1 and node.input[1].startswith(POOLING_WEIGHTS)]
    return list(dict.fromkeys([convs[0].name] + pooling))


def _feeds(wav):
    """One utterance as a batch of one, the graph's inputs."""
    return graph_feeds(wav[None].astype(np.float32), np.array([len(wav)], dtype=np.int64))


def _import_quantization():
    try:
        import onnx
        from onnxruntime import quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise MVectorError(f"int8 quantization needs onnx and onnxruntime; {ONNX_INSTALL_HINT}") from None
    return onnx, quantization, quant_pre_process


def _record_fingerprint(onnx, path: Path, fingerprint: str) -> None:
    """Record the source model's fingerprint in the int8 graph, as the float32 one has it (the
    quantizer drops the metadata), so the int8 backends can check it."""
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {FINGERPRINT_KEY: fingerprint})
    onnx.save(model, str(path))


def quantize_onnx(model_dir, calibration, out_path=None, max_files: int = CALIBRATION_FILES) -> tuple:
    """Write the int8 graph of ``model_dir/model.onnx`` (``mvector.inference.export``) to ``out_path`` (default
    ``model_dir/model.int8.onnx``), calibrated on up to ``max_files`` of ``calibration`` (a folder or
    list of speech); a quarter of them (at least two) are held out for the cosine check.

    Returns ``(path, min_cosine)``: the lowest int8-vs-float32 cosine on the held-out utterances.
    """
    onnx, quantization, quant_pre_process = _import_quantization()
    model_dir = Path(model_dir)
    source = model_dir / ONNX_FILE
    if not source.is_file():
        raise MVectorError(f"{source} not found: export the float32 ONNX graph first "
                           f"(export_model.py --model_dir {model_dir} --formats onnx)")
    out_path = Path(out_path) if out_path is not None else model_dir / INT8_ONNX_FILE
    # The threshold only keeps a model without one from warning: nothing here is decided by it.
    float32 = MVectorPredictor(model_dir, threshold=0.5, backend="onnx")
    waves = _waveforms(float32, calibration_files(calibration, max_files))
    held_out = max(2, len(waves) // 4)
    calibrate, check = waves[:-held_out], waves[-held_out:]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._items = iter(calibrate)

        def get_next(self):
            wav = next(self._items, None)
            return None if wav is None else _feeds(wav)

    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        # One self-contained file first: the exporter writes weights beside the graph (model.onnx.data).
        single = Path(scratch) / "float32.onnx"
        onnx.save(onnx.load(str(source)), str(single))
        # ONNX Runtime's recommended preparation: shape inference and graph cleanup before quantizing.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(single), str(prepared), skip_symbolic_shape=True)
        staged = Path(scratch) / "int8.onnx"
        # reduce_range: 7-bit weights. Without VNNI, x86 int8 kernels multiply uint8 by int8 into
        # saturating 16-bit sums; full-range weights overflow them (cosine 0.77 instead of 0.999 measured
        # on the default model on an AVX2 machine).
        quantization.quantize_static(
            str(prepared), str(staged), Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            op_types_to_quantize=["Conv"], nodes_to_exclude=float_convs(onnx.load(str(prepared))),
            activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax, reduce_range=True)
        # The float32 backend above already checked its graph against this fingerprint.
        _record_fingerprint(onnx, staged, float32.fingerprint())
        int8 = MVectorPredictor(model_dir, threshold=0.5, backend="onnx-int8", onnx_path=staged)
        # Both embed L2-normalised rows, so the row-wise dot product is the cosine.
        min_cosine = float(np.sum(float32.embed_waveforms(check) * int8.embed_waveforms(check), axis=1).min())
        if not min_cosine >= MIN_COSINE:
            raise MVectorError(f"{source}: the int8 graph's embeddings are too far from float32 (cosine "
                               f"{min_cosine:.4f} < {MIN_COSINE} on {len(check)} held-out utterances); not written")
        os.replace(staged, out_path)
    fsync_dir(out_path.parent)
    return out_path, min_cosine
