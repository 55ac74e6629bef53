"""Training-time classifier heads placed on top of the speaker embedding.

``CosineClassifier`` feeds the margin losses (they need cosines in [-1, 1]); ``LinearClassifier``
feeds plain cross-entropy. ``output_type`` lets the trainer check that head and loss agree.
"""
import torch
import torch.nn.functional as F
from torch import nn

from mvector.errors import ConfigError
from mvector.registry import Registry

CLASSIFIERS = Registry("classifier")


def _check_count(owner, key, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _hidden_blocks(owner, input_dim, num_blocks, inter_dim):
    """``num_blocks`` x (Linear -> BatchNorm -> ReLU) between embedding and output layer."""
    _check_count(owner, "input_dim", input_dim, 1)
    _check_count(owner, "num_blocks", num_blocks, 0)
    _check_count(owner, "inter_dim", inter_dim, 1)
    layers = []
    for index in range(num_blocks):
        # No bias: the BatchNorm right after it has its own shift.
        layers += [nn.Linear(input_dim if index == 0 else inter_dim, inter_dim, bias=False),
                   nn.BatchNorm1d(inter_dim), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), (inter_dim if num_blocks else input_dim)


class _Head(nn.Module):
    output_type = None

    def _checked(self, x):
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.input_dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ConfigError(f"{type(self).__name__}: expects embeddings [batch, {self.input_dim}], got {shape}")
        return self.blocks(x)


@CLASSIFIERS.register(name="Cosine")
class CosineClassifier(_Head):
    """Cosine similarity between the embedding and each class centre: [B, num_classes] in [-1, 1].

    With ``num_centers`` K > 1 (sub-centre ArcFace) each class owns K centres, stored as rows
    ``class * K + k`` of a [num_classes * K, D] weight, and a class's cosine is the max over them.
    """

    output_type = "cosine"

    def __init__(self, input_dim, num_classes, num_centers=1, num_blocks=0, inter_dim=512):
        super().__init__()
        owner = type(self).__name__
        self.input_dim = input_dim
        self.num_classes = _check_count(owner, "num_classes", num_classes, 1)
        self.num_centers = _check_count(owner, "num_centers", num_centers, 1)
        self.blocks, feature_dim = _hidden_blocks(owner, input_dim, num_blocks, inter_dim)
        self.weight = nn.Parameter(torch.empty(num_classes * num_centers, feature_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x):
        x = self._checked(x)
        # Cosines feed margins of ~0.2 rad at scale ~32: bf16's ~1e-2 resolution is too coarse.
        with torch.autocast(device_type=x.device.type, enabled=False):
            cos = F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        # Rounding can land just outside [-1, 1]; the margin losses take acos/sqrt of these.
        cos = cos.clamp(-1.0, 1.0)
        if self.num_centers > 1:
            cos = cos.view(-1, self.num_classes, self.num_centers).amax(dim=2)
        return cos


@CLASSIFIERS.register(name="Linear")
class LinearClassifier(_Head):
    """An affine layer giving unnormalised logits [B, num_classes] for cross-entropy."""

    output_type = "logits"

    def __init__(self, input_dim, num_classes, num_blocks=0, inter_dim=512):
        super().__init__()
        owner = type(self).__name__
        self.input_dim = input_dim
        self.num_classes = _check_count(owner, "num_classes", num_classes, 1)
        self.blocks, feature_dim = _hidden_blocks(owner, input_dim, num_blocks, inter_dim)
        self.output = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        return self.output(self._checked(x))


def build_classifier(name, input_dim, num_classes, **kwargs):
    """Build a registered head ('Cosine', 'Linear'); unknown names/keywords raise ConfigError."""
    return CLASSIFIERS.build(name, input_dim, num_classes, **kwargs)
