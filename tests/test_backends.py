"""The torch backend's CPU fast paths give the embeddings of one plain padded forward pass.

Unpadded batches skip every mask (lengths=None) and backbones with ``cpu_batch_frames`` are split
into several passes; neither may change an embedding.
"""
import numpy as np
import pytest
import torch

from mvector.inference.backends import TorchBackend
from mvector.config import load_config
from mvector.embedder import build_embedder
from mvector.model_dir import save_model_dir
from predict_helpers import ROOT, coloured_noise, make_model_dir

pytestmark = pytest.mark.integration

RESNET_SMALL = ["model_conf.model_args.embd_dim=32", "preprocess_conf.method_args.num_mel_bins=40"]


def _reference(backend, waveforms, lengths):
    """One forward pass with explicit lengths: the plain masked path."""
    with torch.inference_mode():
        return backend.embedder(torch.from_numpy(waveforms), torch.from_numpy(lengths)).numpy()


def _batch(seconds_list):
    lengths = np.array([int(s * 16000) for s in seconds_list], dtype=np.int64)
    waveforms = np.zeros((len(lengths), lengths.max()), dtype=np.float32)
    for i, n in enumerate(lengths):
        waveforms[i, :n] = coloured_noise(n / 16000, seed=i)
    return waveforms, lengths


def test_unpadded_batch_skips_masks_with_the_same_embeddings(tmp_path):
    backend = TorchBackend(make_model_dir(tmp_path / "model"))
    waveforms, lengths = _batch([1.5, 1.5, 1.5])
    calls = []
    hook = backend.embedder.backbone.register_forward_pre_hook(lambda m, args: calls.append(args[1]))
    got = backend(waveforms, lengths)
    hook.remove()
    assert calls == [None]  # the fast path really ran
    np.testing.assert_allclose(got, _reference(backend, waveforms, lengths), rtol=1e-4, atol=1e-5)


def test_padded_batch_keeps_its_masks(tmp_path):
    backend = TorchBackend(make_model_dir(tmp_path / "model"))
    waveforms, lengths = _batch([1.5, 1.0])
    calls = []
    hook = backend.embedder.backbone.register_forward_pre_hook(lambda m, args: calls.append(args[1]))
    got = backend(waveforms, lengths)
    hook.remove()
    assert calls[0] is not None and calls[0].tolist() == [148, 98]
    np.testing.assert_allclose(got, _reference(backend, waveforms, lengths), rtol=1e-4, atol=1e-5)


def _resnet_dir(folder):
    config = load_config(ROOT / "configs" / "resnet_se.yml", overrides=RESNET_SMALL)
    torch.manual_seed(0)
    embedder = build_embedder(config)
    weights = {"backbone." + k: v for k, v in embedder.backbone.state_dict().items()}
    return save_model_dir(folder, weights, config, {"threshold": 0.5})


@pytest.fixture
def resnet_backend(tmp_path):
    return TorchBackend(_resnet_dir(tmp_path / "model"))


def test_two_d_backbones_are_split_into_cache_sized_passes(resnet_backend):
    budget = type(resnet_backend.embedder.backbone).cpu_batch_frames
    waveforms, lengths = _batch([2.0, 1.2, 2.0, 0.7, 1.9])  # 198 frames at most: two per pass
    sizes = []
    hook = resnet_backend.embedder.backbone.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    got = resnet_backend(waveforms, lengths)
    hook.remove()
    assert sizes == [budget // 198, budget // 198, 1] == [2, 2, 1]
    np.testing.assert_allclose(got, _reference(resnet_backend, waveforms, lengths), rtol=1e-4, atol=1e-5)


def test_a_pass_holds_one_utterance_however_long(resnet_backend):
    waveforms, lengths = _batch([5.0, 4.5])
    sizes = []
    hook = resnet_backend.embedder.backbone.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    resnet_backend(waveforms, lengths)
    hook.remove()
    assert sizes == [1, 1]


def _batchnorms(predictor):
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in predictor._backend.embedder.modules())


@pytest.mark.slow
@pytest.mark.parametrize("fuse_batchnorm", [None, True])
def test_predictor_folds_batchnorm_at_load_by_default_with_the_same_embeddings(tmp_path, fuse_batchnorm):
    from mvector.inference.predictor import MVectorPredictor

    model_dir = _resnet_dir(tmp_path / "model")  # its convolutions feed BatchNorms directly
    waves = [coloured_noise(s, seed=i) for i, s in enumerate((1.5, 1.0, 2.2))]
    plain = MVectorPredictor(model_dir, backend="torch", fuse_batchnorm=False)
    fused = MVectorPredictor(model_dir, backend="torch", fuse_batchnorm=fuse_batchnorm)
    assert _batchnorms(fused) < _batchnorms(plain)
    np.testing.assert_allclose(fused.predict_batch(waves, sample_rate=16000),
                               plain.predict_batch(waves, sample_rate=16000), atol=1e-4)


def test_folding_that_would_change_outputs_warns_by_default_and_fails_when_required(tmp_path, monkeypatch):
    from mvector.inference import batchnorm_fusion
    from mvector.errors import MVectorError
    from mvector.inference.predictor import MVectorPredictor

    model_dir = make_model_dir(tmp_path / "model")
    unfolded = _batchnorms(MVectorPredictor(model_dir, fuse_batchnorm=False))
    monkeypatch.setattr(batchnorm_fusion, "MAX_RELATIVE_ERROR", -1.0)  # every fold now counts as a change
    with pytest.warns(UserWarning, match="fuse_batchnorm: folding .* changed its outputs"):
        predictor = MVectorPredictor(model_dir, backend="torch")
    assert _batchnorms(predictor) == unfolded
    with pytest.raises(MVectorError, match="changed its outputs"):
        MVectorPredictor(model_dir, fuse_batchnorm=True)


def test_fuse_batchnorm_is_refused_for_other_backends(tmp_path):
    from mvector.errors import ConfigError
    from mvector.inference.predictor import MVectorPredictor

    with pytest.raises(ConfigError, match="fuse_batchnorm applies to the torch backend, not 'onnx'"):
        MVectorPredictor(make_model_dir(tmp_path / "model"), backend="onnx", fuse_batchnorm=True)
