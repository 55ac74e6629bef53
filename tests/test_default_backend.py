"""The path a user gets without asking (backend 'auto'): on the CPU the model converted for
OpenVINO once, cached under its fingerprint, with torch's embeddings; torch, with one log line,
where OpenVINO is missing or cannot convert the model; a broken model directory stays an error."""
import logging
import shutil
import sys

import numpy as np
import pytest

from mvector.errors import ModelMismatchError, MVectorError
from mvector.inference import backends
from mvector.inference.backends import ConvertedOpenVinoBackend, TorchBackend
from mvector.inference.predictor import MVectorPredictor
from predict_helpers import coloured_noise, make_model_dir

pytestmark = pytest.mark.integration
pytest.importorskip("openvino")
from openvino import Type  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MVECTOR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "openvino"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model") / "m")


def _waves():
    return [coloured_noise(seconds, seed=i) for i, seconds in enumerate((1.5, 3.0, 0.7))]


def test_the_default_is_openvino_converted_once_with_torchs_embeddings(model_dir, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="mvector.inference.backends"):
        first = MVectorPredictor(model_dir)
    assert isinstance(first._backend, ConvertedOpenVinoBackend)
    assert [r.getMessage() for r in caplog.records] == [
        f"{model_dir}: converting the model for OpenVINO, once (it is then read from {next(cache.iterdir())})"]
    expected = MVectorPredictor(model_dir, backend="torch").embed_waveforms(_waves())
    got = first.embed_waveforms(_waves())
    assert np.min(np.sum(got * expected, axis=1)) > 0.999
    assert first.fingerprint() == MVectorPredictor(model_dir, backend="torch").fingerprint()  # same library
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mvector.inference.backends"):
        again = MVectorPredictor(model_dir)
    assert not caplog.records  # read from the cache, silently
    np.testing.assert_allclose(again.embed_waveforms(_waves()), got, atol=1e-5)


def test_the_bfloat16_backend_converts_once_and_stays_within_cosine_0999(model_dir, cache, caplog):
    """On a CPU with bfloat16 units: the features in float32, then the backbone in bfloat16, both
    converted once; elsewhere one error naming the CPU's capabilities (the host decides which of the
    two this test checks)."""
    if "BF16" not in backends.openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(MVectorError, match="this CPU has no bfloat16 units .* use backend='auto'"):
            MVectorPredictor(model_dir, backend="openvino-bf16")
        return
    float32 = MVectorPredictor(model_dir, backend="torch").embed_waveforms(_waves())
    with caplog.at_level(logging.WARNING, logger="mvector.inference.backends"):
        bf16 = MVectorPredictor(model_dir, backend="openvino-bf16")
    assert [r.getMessage() for r in caplog.records] == [
        f"{model_dir}: converting the model for OpenVINO, once (it is then read from {next(cache.iterdir())})"]
    assert next(cache.iterdir()).name.endswith("-split")
    precisions = [runner._compiled.get_property("INFERENCE_PRECISION_HINT") for runner in bf16._backend._runners]
    assert precisions == [Type.f32, Type.bf16]  # the features, then the backbone
    got = bf16.embed_waveforms(_waves())
    assert np.min(np.sum(got * float32, axis=1)) > 0.999
    assert not np.allclose(got, float32, atol=1e-5)  # it did round: bfloat16 keeps 8 bits of mantissa
    assert bf16.fingerprint() == MVectorPredictor(model_dir, backend="torch").fingerprint()  # same library
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mvector.inference.backends"):
        again = MVectorPredictor(model_dir, backend="openvino-bf16")
    assert not caplog.records  # read from the cache, silently
    np.testing.assert_allclose(again.embed_waveforms(_waves()), got, atol=1e-5)


def test_a_damaged_cache_entry_is_converted_again(model_dir, cache):
    MVectorPredictor(model_dir)
    entry = next(cache.iterdir())
    (entry / "model.bin").write_bytes(b"half a file")
    (entry / "model.xml").write_text("<not a model", encoding="utf-8")
    assert isinstance(MVectorPredictor(model_dir)._backend, ConvertedOpenVinoBackend)


def test_without_openvino_torch_runs_with_one_log_line(model_dir, cache, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with caplog.at_level(logging.WARNING, logger="mvector.inference.backends"):
        predictor = MVectorPredictor(model_dir)
    assert isinstance(predictor._backend, TorchBackend)
    assert [r.getMessage() for r in caplog.records] == [
        f"{model_dir}: running it with torch instead of OpenVINO: openvino is not installed; "
        f"{backends.OPENVINO_INSTALL_HINT}"]
    assert not cache.exists()


def test_a_conversion_that_fails_leaves_torch_and_only_remembers_why(model_dir, cache, caplog, monkeypatch):
    import mvector.inference.export as export

    def drifting(*args, **kwargs):
        raise export.MVectorError("the exported graph disagrees with PyTorch (cosine 0.9 < 0.9999)")

    monkeypatch.setattr(export, "converted_for_openvino", drifting)
    with caplog.at_level(logging.WARNING, logger="mvector.inference.backends"):
        predictor = MVectorPredictor(model_dir)
    assert isinstance(predictor._backend, TorchBackend)
    assert "running it with torch instead of OpenVINO: converting it failed (the exported graph disagrees" in \
        caplog.records[-1].getMessage()
    # Nothing half-written is kept; the reason is, so the next load does not try for minutes again.
    (remembered,) = [p for p in cache.rglob("*") if p.is_file()]
    assert remembered.suffix == ".failed" and "disagrees with PyTorch" in remembered.read_text()
    monkeypatch.setattr(export, "converted_for_openvino", lambda *a, **k: pytest.fail("tried to convert again"))
    with caplog.at_level(logging.WARNING, logger="mvector.inference.backends"):
        assert isinstance(MVectorPredictor(model_dir)._backend, TorchBackend)
    assert f"(remembered in {remembered})" in caplog.records[-1].getMessage()


def test_weights_that_do_not_fit_their_config_are_an_error_not_a_fallback(model_dir, tmp_path, cache, caplog):
    broken = shutil.copytree(model_dir, tmp_path / "broken")
    config = (broken / "config.yml").read_text(encoding="utf-8")
    assert "channels: 64" in config
    (broken / "config.yml").write_text(config.replace("channels: 64", "channels: 32"), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="mvector.inference.backends"):
        with pytest.raises(ModelMismatchError, match="shape mismatch"):
            MVectorPredictor(broken)
    assert not caplog.records


@pytest.mark.slow
def test_a_model_openvinos_torch_front_end_cannot_take_is_converted_through_onnx(tmp_path, cache):
    """The LSTM exports as a scan over frames, which OpenVINO reads from ONNX but not from torch.export:
    the default path still gets OpenVINO, with torch's embeddings at any length."""
    pytest.importorskip("onnxscript")
    import torch

    from mvector.config import load_config
    from mvector.embedder import build_embedder
    from mvector.model_dir import save_model_dir
    from mvector.models.sequence import LSTMEncoder
    from predict_helpers import ROOT

    if not LSTMEncoder.exportable:
        pytest.skip("the LSTM exports from torch 2.6 on")
    config = load_config(ROOT / "configs" / "lstm.yml", overrides=[
        "model_conf.model_args.hidden_size=8", "model_conf.model_args.embd_dim=16",
        "model_conf.model_args.bidirectional=true", "preprocess_conf.method_args.num_mel_bins=40"])
    torch.manual_seed(0)
    weights = {"backbone." + k: v for k, v in build_embedder(config).backbone.state_dict().items()}
    model_dir = save_model_dir(tmp_path / "lstm", weights, config, {"threshold": 0.5})
    predictor = MVectorPredictor(model_dir)
    assert isinstance(predictor._backend, ConvertedOpenVinoBackend)
    expected = MVectorPredictor(model_dir, backend="torch").embed_waveforms(_waves())
    assert np.min(np.sum(predictor.embed_waveforms(_waves()) * expected, axis=1)) > 0.999
