"""ECAPA-TDNN (Desplanques et al., 2020) with the reference toolkit's layout.

Every layer is length-aware: padded frames are zeroed before each convolution wider than one
frame (so it sees exactly the zeros its own padding would add), squeeze-excitation averages over
valid frames only, and the pooling ignores padding. Point-wise layers (1x1 convs, BatchNorm in
eval mode, ReLU) cannot mix frames, so they run unmasked.
"""
import torch
from torch import nn
import torch.nn.functional as F

from mvector.errors import ConfigError
from mvector.models import BACKBONES
from mvector.models.masking import apply_mask, lengths_to_mask, masked_mean
from mvector.models.pooling import build_pooling
from mvector.models.base import Backbone


class Conv1dReluBn(nn.Module):
    """'Same'-length convolution -> ReLU -> BatchNorm (the reference's order)."""

    def __init__(self, in_channels, out_channels, kernel_size=1, dilation=1):
        super().__init__()
        self.needs_mask = kernel_size > 1
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size,
                              padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x, mask=None):
        if self.needs_mask:
            x = apply_mask(x, mask)
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    """Res2Net split: channel groups processed in a chain, each seeing the previous group's output.

    The last group passes through untouched, as in Res2Net.
    """

    def __init__(self, channels, kernel_size, dilation, scale):
        super().__init__()
        if channels % scale:
            raise ConfigError(f"EcapaTdnn: channels ({channels}) must be divisible by scale ({scale})")
        self.width = channels // scale
        self.blocks = nn.ModuleList(Conv1dReluBn(self.width, self.width, kernel_size, dilation)
                                    for _ in range(max(scale - 1, 1)))

    def forward(self, x, mask=None):
        groups = torch.split(x, self.width, dim=1)
        outputs = []
        carried = None
        for group, block in zip(groups, self.blocks):
            carried = group if carried is None else carried + group
            carried = block(carried, mask)
            outputs.append(carried)
        outputs.extend(groups[len(self.blocks):])
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    """Channel gates from the utterance mean, computed over valid frames only."""

    def __init__(self, channels, reduction=2):
        super().__init__()
        self.squeeze = nn.Linear(channels, channels // reduction)
        self.excite = nn.Linear(channels // reduction, channels)

    def forward(self, x, mask=None):
        gates = torch.sigmoid(self.excite(F.relu(self.squeeze(masked_mean(x, mask)))))
        return x * gates.unsqueeze(-1)


class SERes2Block(nn.Module):
    """1x1 conv -> dilated Res2 conv -> 1x1 conv -> squeeze-excitation."""

    def __init__(self, channels, kernel_size, dilation, scale):
        super().__init__()
        self.expand = Conv1dReluBn(channels, channels)
        self.res2 = Res2Conv1dReluBn(channels, kernel_size, dilation, scale)
        self.project = Conv1dReluBn(channels, channels)
        self.se = SqueezeExcitation(channels)

    def forward(self, x, mask=None):
        return self.se(self.project(self.res2(self.expand(x), mask)), mask)


@BACKBONES.register
class EcapaTdnn(Backbone):
    """ECAPA-TDNN: three SE-Res2 blocks with dilations 2, 3, 4, multi-layer aggregation, pooling.

    ``forward(features[B, T, input_size], lengths[B] or None) -> [B, embd_dim]``.
    """

    def __init__(self, input_size, embd_dim=192, pooling_type="ASP", channels=512, scale=8):
        super().__init__()
        self.embd_dim = embd_dim
        self.layer1 = Conv1dReluBn(input_size, channels, kernel_size=5)
        self.blocks = nn.ModuleList(SERes2Block(channels, kernel_size=3, dilation=dilation, scale=scale)
                                    for dilation in (2, 3, 4))
        cat_channels = channels * len(self.blocks)
        self.aggregate = nn.Conv1d(cat_channels, cat_channels, kernel_size=1)
        self.pooling = build_pooling(pooling_type, cat_channels)
        self.pooled_bn = nn.BatchNorm1d(self.pooling.output_dim)
        self.linear = nn.Linear(self.pooling.output_dim, embd_dim)
        self.embd_bn = nn.BatchNorm1d(embd_dim)

    def forward(self, x, lengths=None):
        x = x.transpose(1, 2)
        mask = None if lengths is None else lengths_to_mask(lengths.to(x.device), x.shape[-1])
        # Each block sees the sum of all earlier outputs (dense residuals, as in the reference).
        summed = self.layer1(x, mask)
        block_outputs = []
        for block in self.blocks:
            out = block(summed, mask) + summed
            block_outputs.append(out)
            summed = summed + out
        x = F.relu(self.aggregate(torch.cat(block_outputs, dim=1)))
        x = self.pooled_bn(self.pooling(x, mask))
        return self.embd_bn(self.linear(x))
