"""CAM++, ERes2Net and ResNetSE internals: masked context/squeeze statistics against direct
formulas, and padding invariance on small configs with awkward lengths (odd, tiny, several CAM
segments, NaN padding)."""
import pytest
import torch
import torch.nn.functional as F

from mvector.models import campplus
from mvector.models.campplus import CAMPPlus, segment_context
from mvector.models.eres2net import ERes2Net
from mvector.models.masking import lengths_to_mask
from mvector.models.resnet_se import ResNetSE, frequency_time_mean

pytestmark = pytest.mark.unit


def test_segment_context_without_mask_matches_the_reference_average_pooling():
    x = torch.randn(2, 3, 47)
    context = segment_context(x, None, seg_len=10)
    expected = x.mean(-1, keepdim=True) + F.avg_pool1d(x, 10, 10, ceil_mode=True)
    torch.testing.assert_close(context, expected)


def test_segment_context_counts_valid_frames_only():
    seg_len, lengths = 10, torch.tensor([47, 23, 1])
    x = torch.randn(3, 4, 47)
    mask = lengths_to_mask(lengths, 47)
    context = segment_context(x * mask, mask, seg_len)
    for b, n in enumerate(lengths.tolist()):
        valid = x[b, :, :n]
        for s in range(context.shape[-1]):
            segment = valid[:, s * seg_len:(s + 1) * seg_len]
            segment_mean = segment.mean(-1) if segment.shape[-1] else torch.zeros(4)
            torch.testing.assert_close(context[b, :, s], valid.mean(-1) + segment_mean)


@pytest.mark.parametrize("channels_last", [False, True])
def test_frequency_time_mean_uses_valid_frames_only(channels_last):
    x = torch.randn(3, 5, 4, 20)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    lengths = torch.tensor([20, 7, 1])
    expected = torch.stack([x[b, :, :, :n].mean(dim=(1, 2)) for b, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(frequency_time_mean(x, lengths_to_mask(lengths, 20)), expected)
    torch.testing.assert_close(frequency_time_mean(x, None), x.mean(dim=(2, 3)))


SMALL_MODELS = {
    "CAMPPlus": lambda: CAMPPlus(24, embd_dim=16, growth_rate=8, bn_size=2, init_channels=16, fcm_channels=4,
                                 block_layers=(2, 2, 2), seg_len=7),
    "ERes2Net": lambda: ERes2Net(24, embd_dim=16, num_blocks=(1, 1, 2, 1), m_channels=8),
    "ResNetSE": lambda: ResNetSE(24, embd_dim=16, layers=(1, 1, 1, 1), num_filters=(4, 8, 8, 8)),
}


def _randomize_batch_norm(model):
    """Non-trivial running statistics, so eval-mode BN shifts padded frames away from zero."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model


def _pad(utterance, total, padding):
    shape = (1, total - utterance.shape[1], utterance.shape[2])
    filler = torch.full(shape, float("nan")) if padding == "nan" else torch.randn(shape) * 100
    return torch.cat([utterance, filler], dim=1)


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
@pytest.mark.parametrize("padding", ["noise", "nan"])
def test_awkward_lengths_embed_as_if_alone(name, padding):
    torch.manual_seed(0)
    model = _randomize_batch_norm(SMALL_MODELS[name]()).eval()
    # Odd lengths, one shorter than the total time stride, several CAM++ segments of 7 frames.
    lengths = [61, 33, 5, 2]
    total = max(lengths)
    utterances = [torch.randn(1, n, 24) for n in lengths]
    batch = torch.cat([_pad(u, total, padding) for u in utterances])
    with torch.no_grad():
        together = model(batch, torch.tensor(lengths))
        for u, embedding in zip(utterances, together):
            alone = model(u)[0]
            assert torch.isfinite(embedding).all()
            assert F.cosine_similarity(alone, embedding, dim=0) > 0.9999


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_full_lengths_equal_no_lengths(name):
    torch.manual_seed(0)
    model = _randomize_batch_norm(SMALL_MODELS[name]()).eval()
    x = torch.randn(2, 41, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([41, 41])), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_campplus_runs_its_fcm_in_slices_in_cpu_inference_with_the_same_result(monkeypatch, padded):
    torch.manual_seed(0)
    model = _randomize_batch_norm(SMALL_MODELS["CAMPPlus"]()).eval()
    x = torch.randn(5, 40, 24)
    lengths = torch.tensor([40, 31, 40, 9, 22]) if padded else None
    slices = []
    model.head.register_forward_hook(lambda module, inputs, output: slices.append(len(output)))
    with torch.inference_mode():
        whole = model(x, lengths)
        monkeypatch.setattr(campplus, "FCM_CPU_FRAMES", 80)  # two 40-frame utterances per slice
        sliced = model(x, lengths)
    assert slices == [5, 2, 2, 1]
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)
