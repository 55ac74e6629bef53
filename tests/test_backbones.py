import pytest
import torch

from mvector.errors import ConfigError
from mvector.models import BACKBONES, build_backbone

pytestmark = pytest.mark.unit

# Backbone-only parameter counts of the reference toolkit (80-dim input, 192-d embedding).
REFERENCE_PARAMS = {"CAMPPlus": 6.85e6, "EcapaTdnn": 6.19e6, "ERes2Net": 6.61e6,
                    "ResNetSE": 9.12e6, "Res2Net": 5.61e6, "TDNN": 2.77e6}


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_is_within_ten_percent_of_the_reference(name):
    model = build_backbone(name, input_size=80, embd_dim=192)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - REFERENCE_PARAMS[name]) / REFERENCE_PARAMS[name] < 0.10, params


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_padding_does_not_change_the_embedding(name):
    torch.manual_seed(0)
    model = build_backbone(name, input_size=80, embd_dim=192).eval()
    short = torch.randn(1, 137, 80)
    long = torch.randn(1, 301, 80)
    garbage = torch.randn(1, 301 - 137, 80) * 10
    garbage[0, :3, :4] = float("nan")  # padding may hold anything, NaN and inf included
    garbage[0, 5:7] = float("inf")
    batch = torch.cat([torch.cat([short, garbage], dim=1), long], dim=0)
    with torch.no_grad():
        alone_short, alone_long = model(short), model(long)
        together = model(batch, torch.tensor([137, 301]))
    assert together.shape == (2, 192)
    cos = torch.nn.functional.cosine_similarity
    assert cos(alone_short, together[:1]).item() > 0.9999
    assert cos(alone_long, together[1:]).item() > 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_training_step_produces_finite_gradients(name):
    model = build_backbone(name, input_size=80, embd_dim=64)
    out = model(torch.randn(3, 120, 80), torch.tensor([120, 90, 60]))
    out.pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_every_backbone_takes_every_pooling():
    for name in ["EcapaTdnn", "TDNN"]:
        for pooling in ["ASP", "SAP", "TSP", "TAP", "TSTP"]:
            model = build_backbone(name, input_size=40, embd_dim=32, pooling_type=pooling).eval()
            assert model(torch.randn(2, 50, 40)).shape == (2, 32)


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ConfigError) as err:
        build_backbone("Wav2Vec", input_size=80)
    for name in BACKBONES:
        assert name in str(err.value)


def test_unknown_backbone_argument_is_named():
    with pytest.raises(ConfigError, match="chanels"):
        build_backbone("EcapaTdnn", input_size=80, chanels=512)
