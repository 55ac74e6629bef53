import pytest
import torch

from mvector.errors import ConfigError
from mvector.models.masking import conv_lengths, lengths_to_mask, spectrogram_input, strided_masks
from mvector.models.pooling import POOLINGS, build_pooling

pytestmark = pytest.mark.unit

NAMES = ["ASP", "SAP", "TSP", "TAP", "TSTP"]


@pytest.mark.parametrize("name", NAMES)
def test_padding_never_changes_the_pooled_vector(name):
    torch.manual_seed(0)
    pool = build_pooling(name, 16).eval()
    x = torch.randn(1, 16, 30)
    garbage = torch.randn(1, 16, 12) * 1e3
    batch = torch.cat([torch.cat([x, garbage], dim=-1), torch.randn(1, 16, 42)], dim=0)
    mask = lengths_to_mask(torch.tensor([30, 42]), 42)
    alone, padded = pool(x), pool(batch, mask)[:1]
    assert alone.shape == (1, pool.output_dim)
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-5)


def test_statistics_match_direct_formulas():
    x = torch.randn(2, 4, 25)
    mean, var, std = x.mean(-1), x.var(-1, unbiased=False), x.std(-1, unbiased=False)
    torch.testing.assert_close(build_pooling("TAP", 4)(x), mean)
    torch.testing.assert_close(build_pooling("TSP", 4)(x), torch.cat([mean, var], 1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(build_pooling("TSTP", 4)(x), torch.cat([mean, std], 1), rtol=1e-4, atol=1e-4)


def test_attentive_pooling_attends_over_each_frame_with_the_utterances_mean_and_std():
    """ASP's global context is ECAPA's: the attention's first layer reads [frame; mean; std] at every
    frame (computed once per utterance for the statistics' part, which must give the same)."""
    torch.manual_seed(0)
    pool = build_pooling("ASP", 8).eval()
    for module in pool.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 20)
    lengths = torch.tensor([20, 13])
    expected = []
    for row, length in zip(x, lengths):
        frames = row[:, :length]
        mean, std = frames.mean(-1), frames.var(-1, unbiased=False).clamp(min=1e-5).sqrt()
        context = torch.cat([frames, mean[:, None].expand_as(frames), std[:, None].expand_as(frames)])
        weights = torch.softmax(pool.attention(context[None])[0], dim=-1)
        weighted_mean = (frames * weights).sum(-1)
        weighted_std = ((frames.square() * weights).sum(-1) - weighted_mean.square()).clamp(min=1e-5).sqrt()
        expected.append(torch.cat([weighted_mean, weighted_std]))
    torch.testing.assert_close(pool(x, lengths_to_mask(lengths, 20)), torch.stack(expected), rtol=1e-4, atol=1e-4)


def test_unbiased_statistics_pooling_is_torch_std_on_valid_frames_only():
    torch.manual_seed(0)
    pool = build_pooling("TSTP", 4, unbiased=True, var_floor=0.0)
    x = torch.randn(2, 4, 25)
    padded = torch.cat([x[:1], torch.cat([x[1:, :, :17], torch.full((1, 4, 8), 1e4)], dim=-1)])
    mask = lengths_to_mask(torch.tensor([25, 17]), 25)
    expected = torch.stack([torch.cat([x[0].mean(-1), x[0].std(-1)]),
                            torch.cat([x[1, :, :17].mean(-1), x[1, :, :17].std(-1)])])
    torch.testing.assert_close(pool(padded, mask), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pool(x), torch.cat([x.mean(-1), x.std(-1)], 1), rtol=1e-5, atol=1e-5)


def test_a_negative_variance_floor_is_refused():
    with pytest.raises(ConfigError, match="var_floor"):
        build_pooling("TSTP", 4, var_floor=-1.0)
    with pytest.raises(ConfigError, match="unknown key.*'unbias'.*valid keys: in_dim, unbiased, var_floor"):
        build_pooling("TSTP", 4, unbias=True)


def test_attention_pooling_of_a_constant_sequence_is_that_constant():
    x = torch.full((1, 8, 10), 3.0)
    torch.testing.assert_close(build_pooling("SAP", 8)(x), torch.full((1, 8), 3.0))
    torch.testing.assert_close(build_pooling("ASP", 8).eval()(x)[:, :8], torch.full((1, 8), 3.0))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite_on_constant_input(name):
    x = torch.ones(2, 8, 10, requires_grad=True)
    build_pooling(name, 8)(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_unknown_pooling_lists_the_valid_names():
    with pytest.raises(ConfigError) as err:
        build_pooling("MaxPool", 8)
    for name in POOLINGS:
        assert name in str(err.value)


def test_conv_lengths_match_torch_convolution():
    for kernel, stride, padding, dilation in [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 0, 2), (2, 2, 0, 1)]:
        conv = torch.nn.Conv1d(1, 1, kernel, stride, padding, dilation)
        for length in [9, 10, 20, 33]:
            expected = conv(torch.zeros(1, 1, length)).shape[-1]
            assert conv_lengths(torch.tensor([length]), kernel, stride, padding, dilation).item() == expected
            assert conv_lengths(length, kernel, stride, padding, dilation) == expected


def test_spectrogram_input_is_channels_last_with_padding_zeroed_even_when_not_finite():
    x = torch.randn(2, 7, 5)
    x[1, 4:] = float("nan")
    x[1, 5] = float("inf")
    out, mask = spectrogram_input(x, torch.tensor([7, 4]))
    assert out.shape == (2, 1, 5, 7) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(mask, lengths_to_mask(torch.tensor([7, 4]), 7))
    torch.testing.assert_close(out[0, 0], x[0].T)
    torch.testing.assert_close(out[1, 0, :, :4], x[1, :4].T)
    assert torch.equal(out[1, 0, :, 4:], torch.zeros(5, 3))
    unmasked, no_mask = spectrogram_input(x[:1], None)
    assert no_mask is None and torch.equal(unmasked[0, 0], x[0].T)


def test_strided_masks_follow_each_strided_convolution():
    conv = torch.nn.Conv1d(1, 1, kernel_size=3, stride=2, padding=1)
    lengths, frames = torch.tensor([37, 20, 5]), 37
    masks = strided_masks(lengths, frames, 3, torch.float16, kernel_size=3, stride=2, padding=1)
    assert len(masks) == 3
    for mask in masks:
        frames = conv(torch.zeros(1, 1, frames)).shape[-1]
        lengths = torch.tensor([conv(torch.zeros(1, 1, int(n))).shape[-1] for n in lengths])
        assert mask.dtype == torch.float16
        torch.testing.assert_close(mask, lengths_to_mask(lengths, frames, torch.float16))
    assert strided_masks(None, 37, 2, torch.float32, kernel_size=3, stride=2, padding=1) == [None, None]
