"""Classifier heads: shapes, cosine range, sub-centre max, and config errors."""
import pytest
import torch
import torch.nn.functional as F

from mvector.errors import ConfigError
from mvector.models.classifier import CLASSIFIERS, CosineClassifier, LinearClassifier, build_classifier

pytestmark = pytest.mark.unit


def test_registry_names_and_output_types():
    assert set(CLASSIFIERS) == {"Cosine", "Linear"}
    assert build_classifier("Cosine", 8, 5).output_type == "cosine"
    assert build_classifier("Linear", 8, 5).output_type == "logits"


def test_cosine_head_is_cosine_similarity_to_class_weights():
    torch.manual_seed(0)
    head = CosineClassifier(8, 5)
    x = torch.randn(3, 8)
    expected = torch.stack([torch.stack([F.cosine_similarity(v, w, dim=0) for w in head.weight]) for v in x])
    out = head(x)
    assert out.shape == (3, 5)
    assert torch.allclose(out, expected, atol=1e-6)


def test_cosine_head_stays_within_unit_interval():
    torch.manual_seed(0)
    head = CosineClassifier(192, 256, num_blocks=0)
    x = torch.randn(256, 192) * 1e3
    with torch.no_grad():  # class weights parallel to the inputs: float rounding alone can give cos > 1
        head.weight.copy_(x * 3.0)
    out = head(x)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert torch.allclose(out.diagonal(), torch.ones(256), atol=1e-6)
    wide = CosineClassifier(4, 6, num_blocks=1, inter_dim=16)(torch.randn(32, 4) * 1e4)
    assert wide.min() >= -1.0 and wide.max() <= 1.0


def test_sub_centre_head_takes_max_over_each_class_centres():
    torch.manual_seed(0)
    head = CosineClassifier(8, 4, num_centers=3)
    assert head.weight.shape == (12, 8)
    x = torch.randn(5, 8)
    all_centres = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).t()
    expected = torch.stack([all_centres[:, c * 3:(c + 1) * 3].max(dim=1).values for c in range(4)], dim=1)
    out = head(x)
    assert out.shape == (5, 4)
    assert torch.allclose(out, expected, atol=1e-6)


def test_hidden_blocks_are_linear_batchnorm_relu():
    head = build_classifier("Cosine", 8, 5, num_blocks=2, inter_dim=16)
    kinds = [type(layer).__name__ for layer in head.blocks]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2
    assert head.weight.shape == (5, 16)
    assert head(torch.randn(4, 8)).shape == (4, 5)


def test_linear_head_gives_affine_logits():
    torch.manual_seed(0)
    head = LinearClassifier(8, 7)
    x = torch.randn(3, 8)
    out = head(x)
    assert out.shape == (3, 7)
    assert torch.allclose(out, x @ head.output.weight.t() + head.output.bias)
    assert build_classifier("Linear", 8, 7, num_blocks=1, inter_dim=32)(x).shape == (3, 7)


def test_cosine_head_under_bf16_autocast_returns_float32_cosines():
    torch.manual_seed(0)
    head = CosineClassifier(16, 10, num_centers=2)
    x = torch.randn(4, 16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = head(x)
    assert low.dtype == torch.float32
    assert torch.allclose(low, head(x), atol=1e-6)


def test_bad_names_keys_values_and_inputs_raise_config_error():
    with pytest.raises(ConfigError, match="Cosine, Linear"):
        build_classifier("ArcMargin", 8, 5)
    with pytest.raises(ConfigError, match="num_centers"):
        build_classifier("Linear", 8, 5, num_centers=3)
    with pytest.raises(ConfigError, match="num_centers"):
        build_classifier("Cosine", 8, 5, num_centers=0)
    with pytest.raises(ConfigError, match="num_classes"):
        build_classifier("Linear", 8, 0)
    with pytest.raises(ConfigError, match=r"\[batch, 8\]"):
        build_classifier("Cosine", 8, 5)(torch.randn(2, 9))
