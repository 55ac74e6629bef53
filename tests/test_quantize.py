"""Int8 ONNX (mvector.inference.quantize): the packaged ECAPA-TDNN's convolutions in int8 keep its embeddings on
real speech, the predictor runs the result, and every bad input is refused without writing a file.
(The default CAM++ does not pass the quantizer's quality check yet: the last test shows it refused.)"""
import importlib.util
import shutil

import numpy as np
import pytest

from mvector.inference.backends import INT8_ONNX_FILE, ONNX_FILE
from mvector.errors import ConfigError, MVectorError
from mvector.inference.export import export_model
from mvector.inference.predictor import MVectorPredictor
from mvector.pretrained import pretrained_model_dir
from predict_helpers import DATA, ROOT, dev_by_speaker, dev_files

pytestmark = pytest.mark.integration

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
# Calibrated on training speech (as a user would), checked on the dev speakers, who are not in it.
CALIBRATION = DATA / "train" / "list.tsv"
SMOKE_LIST = DATA / "smoke" / "list.tsv"
QUANTIZED_MODEL = "EcapaTdnn_Fbank"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The ECAPA-TDNN's float32 ONNX graph, and its int8 graph calibrated on training speech."""
    out = tmp_path_factory.mktemp("exported") / "default"
    written = export_model(pretrained_model_dir(QUANTIZED_MODEL), out, "onnx", int8_calibration=CALIBRATION)
    assert written == {"onnx": out / ONNX_FILE, "onnx-int8": out / INT8_ONNX_FILE}
    return out


@pytest.mark.slow
@pytest.mark.data
def test_int8_graph_quantizes_the_convolutions_and_nothing_before_them(exported):
    import onnx

    graph = onnx.load(str(exported / INT8_ONNX_FILE)).graph
    ops = [node.op_type for node in graph.node]
    assert "DequantizeLinear" in ops and "QuantizeLinear" in ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= sum(op == "Conv" for op in ops) > 0
    # The front-end (frame-to-spectrum and mel matrices, log) runs before the first QuantizeLinear,
    # in float32.
    assert ops.index("Log") < ops.index("QuantizeLinear")
    spectrum = [t for t in graph.initializer if tuple(t.dims) == (400, 2 * 257)]
    assert [t.data_type for t in spectrum] == [onnx.TensorProto.FLOAT]


@pytest.mark.slow
@pytest.mark.data
def test_int8_predictor_keeps_the_float32_embeddings_on_unseen_speech(exported):
    files = dev_files(12)
    reference = MVectorPredictor(exported).predict_batch(files)
    int8 = MVectorPredictor(exported, backend="onnx-int8", batch_size=3).predict_batch(files)
    cosines = np.sum(reference * int8, axis=1)
    # Measured on all 774 dev files: mean 0.9993, 5th percentile 0.9987, lowest 0.992; dev EER
    # 4.46 % -> 4.49 %. The bounds leave room, not slack for a broken graph
    # (full-range weights without reduce_range gave 0.77).
    assert cosines.mean() >= 0.995 and cosines.min() >= 0.95, cosines
    assert not np.allclose(reference, int8, atol=1e-6)  # it really is another graph


@pytest.mark.data
def test_openvino_runs_the_same_int8_graph(exported):
    pytest.importorskip("openvino")
    files = dev_files(6)
    onnx_runtime = MVectorPredictor(exported, backend="onnx-int8", batch_size=3).predict_batch(files)
    openvino = MVectorPredictor(exported, backend="openvino-int8", batch_size=3).predict_batch(files)
    # Two engines' int8 kernels round differently; the same graph still gives the same voices.
    assert np.sum(onnx_runtime * openvino, axis=1).min() >= 0.995


@pytest.mark.parametrize("backend", ["onnx-int8", "openvino-int8"])
def test_missing_int8_file_names_the_command_that_writes_it(backend, tmp_path):
    shutil.copytree(pretrained_model_dir(QUANTIZED_MODEL), tmp_path / "m")
    with pytest.raises(MVectorError, match="model.int8.onnx: ONNX file not found.*--int8_calibration"):
        MVectorPredictor(tmp_path / "m", backend=backend)


def test_quantizing_needs_the_float32_graph_first(tmp_path):
    from mvector.inference.quantize import quantize_onnx

    shutil.copytree(pretrained_model_dir(QUANTIZED_MODEL), tmp_path / "m")
    with pytest.raises(MVectorError, match="model.onnx not found: export the float32 ONNX graph first"):
        quantize_onnx(tmp_path / "m", SMOKE_LIST)
    with pytest.raises(ConfigError, match="add 'onnx' to the formats"):
        export_model(tmp_path / "m", tmp_path / "out", "torchscript", int8_calibration=SMOKE_LIST)


@pytest.mark.data
def test_bad_calibration_audio_is_named(exported, tmp_path):
    from mvector.inference.quantize import quantize_onnx

    with pytest.raises(ConfigError, match="calibration audio not found: .*nowhere"):
        quantize_onnx(exported, tmp_path / "nowhere", out_path=tmp_path / "q.onnx")
    few = tmp_path / "few"
    few.mkdir()
    for source in list(SMOKE_LIST.parent.rglob("*.flac"))[:2]:
        shutil.copy(source, few / source.name)
    with pytest.raises(ConfigError, match="needs at least 4 audio files, found 2"):
        quantize_onnx(exported, few, out_path=tmp_path / "q.onnx")
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(5):
        (broken / f"{i}.wav").write_bytes(b"not audio at all")
    with pytest.raises(ConfigError, match="only 0 of 5 files usable"):
        quantize_onnx(exported, broken, out_path=tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.data
def test_an_int8_graph_that_drifts_is_refused_and_not_written(exported, tmp_path, monkeypatch):
    import mvector.inference.quantize as quantize

    monkeypatch.setattr(quantize, "MIN_COSINE", 1.01)  # no int8 graph can reach it
    with pytest.raises(MVectorError, match=r"too far from float32 \(cosine 0\.9\d+ < 1.01 .*not written"):
        quantize.quantize_onnx(exported, SMOKE_LIST, out_path=tmp_path / "q.onnx", max_files=8)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.data
def test_eval_scores_trials_through_any_backend(exported, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
    eval_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_script)
    speakers = list(dev_by_speaker().items())[:2]
    files = [(path, speaker) for speaker, paths in speakers for path in paths[:3]]
    trials = tmp_path / "trials.tsv"
    trials.write_text("".join(f"{a}\t{b}\t{int(sa == sb)}\n" for i, (a, sa) in enumerate(files)
                              for b, sb in files[i + 1:]))
    results = {}
    for backend in ("torch", "onnx-int8"):
        assert eval_script.main(["--model_dir", str(exported), "--trials", str(trials), "--backend", backend,
                                 "--no_progress"]) == 0
        results[backend] = capsys.readouterr().out
    assert results["torch"].startswith("EER: ") and results["onnx-int8"].startswith("EER: ")
    assert eval_script.main(["--model_dir", str(exported), "--trials", str(trials), "--backend", "onnx-int8",
                             "--save_threshold"]) == 2
    assert "--save_threshold measures the threshold through the torch backend" in capsys.readouterr().err
