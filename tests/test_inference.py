"""fuse_batchnorm: BatchNorm folded into the preceding convolution, only where that is exact."""
import pytest
import torch
from torch import nn

from mvector.config import load_config
from mvector.embedder import build_embedder
from mvector.errors import MVectorError
from mvector.inference.batchnorm_fusion import conv_bn_pairs, fuse_batchnorm
from predict_helpers import ROOT

pytestmark = pytest.mark.unit

CONFIGS = ("cam++.yml", "ecapa_tdnn.yml", "eres2net.yml", "res2net.yml", "resnet_se.yml", "tdnn.yml")


def randomize_batchnorms(module, seed=0):
    """Statistics and affine terms far from the identity, so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.5, generator=generator)
            m.running_var.uniform_(0.3, 3.0, generator=generator)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5, generator=generator)
                m.bias.data.normal_(0, 0.3, generator=generator)
    return module


def count_batchnorms(module):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.fixture(scope="module")
def waveforms():
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([16000, 11000])
    waves = 0.1 * torch.randn(2, 16000, generator=generator)
    return waves.masked_fill(torch.arange(16000) >= lengths[:, None], 0.0), lengths


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_fused_backbone_reproduces_eval_outputs(config, waveforms):
    torch.manual_seed(0)
    embedder = randomize_batchnorms(build_embedder(load_config(ROOT / "configs" / config))).eval()
    fused = fuse_batchnorm(embedder, waveforms)
    # Other lengths than the example that was traced: the fold must not depend on them.
    generator = torch.Generator().manual_seed(2)
    waves, lengths = 0.1 * torch.randn(3, 20000, generator=generator), torch.tensor([20000, 9000, 15000])
    with torch.inference_mode():
        expected, got = embedder(waves, lengths), fused(waves, lengths)
    scale = expected.abs().max()
    assert torch.allclose(got, expected, atol=1e-4 * scale, rtol=1e-4)
    assert torch.cosine_similarity(got, expected).min() > 0.9999
    removed = count_batchnorms(embedder) - count_batchnorms(fused)
    assert removed == len(conv_bn_pairs(embedder, waveforms))
    # The original is untouched.
    assert count_batchnorms(embedder) == count_batchnorms(build_embedder(load_config(ROOT / "configs" / config)))


def test_backbones_with_conv_batchnorm_pairs_lose_their_batchnorms(waveforms):
    # CAM++ and the 2-D ResNets put BatchNorm right after convolutions; TDNN and ECAPA-TDNN after
    # a ReLU, which no fold can absorb.
    for config, foldable in (("cam++.yml", True), ("resnet_se.yml", True), ("tdnn.yml", False),
                             ("ecapa_tdnn.yml", False)):
        embedder = build_embedder(load_config(ROOT / "configs" / config)).eval()
        assert bool(conv_bn_pairs(embedder, waveforms)) == foldable, config


def test_training_mode_model_is_refused(waveforms):
    embedder = build_embedder(load_config(ROOT / "configs" / "tdnn.yml"))
    with pytest.raises(MVectorError, match="eval"):
        fuse_batchnorm(embedder.train(), waveforms)
    embedder.eval()
    embedder.backbone.frames[2].train()  # one BatchNorm left in training mode is enough
    with pytest.raises(MVectorError, match="training mode"):
        fuse_batchnorm(embedder, waveforms)


class Residual(nn.Module):
    """conv -> BN whose conv output also feeds the residual sum: folding would change that sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class InPlaceBetween(nn.Module):
    """conv -> in-place ReLU -> BN on the same tensor object: not a conv output any more."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        y.relu_()
        return self.bn(y)


def test_only_exact_pairs_are_folded():
    x1, x2 = torch.randn(2, 4, 10), torch.randn(2, 2, 5, 6)
    chain = randomize_batchnorms(nn.Sequential(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6), nn.ReLU(),
                                               nn.Conv1d(6, 6, 1, bias=False), nn.BatchNorm1d(6, affine=False))).eval()
    assert conv_bn_pairs(chain, (x1,)) == [("0", "1"), ("3", "4")]
    fused = fuse_batchnorm(chain, (x1,))
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[4], nn.Identity)
    with torch.no_grad():
        assert torch.allclose(fused(x1), chain(x1), atol=1e-5)
    for module, x in ((Residual(), x1), (InPlaceBetween(), x2)):
        module = randomize_batchnorms(module).eval()
        assert conv_bn_pairs(module, (x,)) == []
        fused = fuse_batchnorm(module, (x,))
        assert isinstance(fused.bn, nn.BatchNorm1d | nn.BatchNorm2d)
        with torch.no_grad():
            assert torch.equal(fused(x), module(x))


def test_folding_works_under_inference_mode_and_keeps_requires_grad():
    chain = randomize_batchnorms(nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5))).eval()
    chain[0].weight.requires_grad_(False)
    with torch.inference_mode():
        x = torch.randn(1, 3, 8)  # an inference tensor, which autograd cannot record
        fused = fuse_batchnorm(chain, (x,))
    assert isinstance(fused[1], nn.Identity)
    assert not chain[0].weight.requires_grad  # the detection pass restores the flags it set
    with torch.no_grad():
        assert torch.allclose(fused(x), chain(x), atol=1e-5)
