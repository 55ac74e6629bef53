"""Architecture-specific checks for EcapaTdnn, TDNN and Res2Net (the shared contract is in
test_backbones.py). Small widths keep these fast; the padding logic does not depend on width."""
import pytest
import torch

from mvector.errors import AudioError, ConfigError
from mvector.models import build_backbone

pytestmark = pytest.mark.unit

SMALL = {"EcapaTdnn": dict(channels=64, scale=4), "TDNN": dict(channels=64),
         "Res2Net": dict(m_channels=8, layers=(1, 1, 1, 1))}


def _embed_alone_and_padded(model, features, length, total):
    padded = torch.cat([features, torch.randn(1, total - length, features.shape[-1]) * 100], dim=1)
    batch = torch.cat([padded, torch.randn(1, total, features.shape[-1])], dim=0)
    with torch.no_grad():
        return model(features), model(batch, torch.tensor([length, total]))[:1]


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("input_size", [40, 72])
def test_other_feature_sizes_stay_padding_invariant(name, input_size):
    torch.manual_seed(0)
    model = build_backbone(name, input_size=input_size, embd_dim=32, **SMALL[name]).eval()
    alone, padded = _embed_alone_and_padded(model, torch.randn(1, 83, input_size), 83, 130)
    assert alone.shape == (1, 32)
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4)


def test_res2net_length_bookkeeping_holds_for_every_remainder_of_its_time_stride():
    # The time axis is strided by 3 * 2 * 2 * 2 * 2 = 48; each remainder ends a window differently.
    # A step of 5 (coprime to 2 and 3) visits every remainder of each single stride.
    torch.manual_seed(0)
    model = build_backbone("Res2Net", input_size=40, embd_dim=16, **SMALL["Res2Net"]).eval()
    for length in range(5, 5 + 48, 5):
        alone, padded = _embed_alone_and_padded(model, torch.randn(1, length, 40), length, 60)
        torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4, msg=f"length {length}")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_full_lengths_give_the_unmasked_result(name):
    torch.manual_seed(0)
    model = build_backbone(name, input_size=40, embd_dim=16, **SMALL[name]).eval()
    x = torch.randn(3, 57, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.full((3,), 57)), model(x))


@pytest.mark.parametrize("name, frames", [("TDNN", 14), ("Res2Net", 4)])
def test_too_few_frames_is_an_audio_error_naming_the_minimum(name, frames):
    model = build_backbone(name, input_size=40, **SMALL[name])
    with pytest.raises(AudioError, match=str(model.min_frames)):
        model(torch.randn(1, frames, 40))
    assert model(torch.randn(2, model.min_frames, 40)).shape == (2, 192)


def test_ecapa_channels_must_split_evenly_into_scales():
    with pytest.raises(ConfigError, match="scale"):
        build_backbone("EcapaTdnn", input_size=40, channels=100, scale=8)


def test_res2net_rejects_a_feature_size_smaller_than_its_stem():
    with pytest.raises(ConfigError, match="input_size"):
        build_backbone("Res2Net", input_size=4)
