"""2-D Res2Net (Gao et al., 2019) over (frequency, time) with the reference toolkit's layout.

Lengths are carried through every time stride with the stride's own kernel/stride/padding, and
padded frames are zeroed before every layer that mixes frames (3x3 convs, average and max
pooling), so each layer sees past an utterance's end exactly the zeros its own padding would add.
1x1 convs, BatchNorm in eval mode and ReLU are point-wise and run unmasked.
"""
import torch
from torch import nn
import torch.nn.functional as F

from mvector.errors import AudioError, ConfigError
from mvector.models import BACKBONES
from mvector.models.masking import apply_mask, conv_lengths, lengths_to_mask, spectrogram_input
from mvector.models.pooling import build_pooling
from mvector.models.base import Backbone

# Stem: a 7x7 convolution with stride 3, then a 3x3 max-pool with stride 2 (both padded by 1).
STEM_CONV = dict(kernel_size=7, stride=3, padding=1)
STEM_POOL = dict(kernel_size=3, stride=2, padding=1)


class Bottle2neck(nn.Module):
    """Res2Net bottleneck: 1x1 conv, a chain of 3x3 convs over channel groups, 1x1 conv, residual.

    The first block of a stage (``first_in_stage``) may stride; its groups do not chain and its
    pass-through group is average-pooled so that every group is downsampled alike.
    """

    expansion = 4

    def __init__(self, in_channels, planes, stride, base_width, scale, first_in_stage):
        super().__init__()
        self.stride = stride
        self.first_in_stage = first_in_stage
        self.width = planes * base_width // 64
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, self.width * scale, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width * scale)
        n_convs = max(scale - 1, 1)
        self.convs = nn.ModuleList(nn.Conv2d(self.width, self.width, kernel_size=3, stride=stride, padding=1,
                                             bias=False) for _ in range(n_convs))
        self.bns = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(n_convs))
        self.pass_through_pool = (nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)
                                  if first_in_stage and scale > 1 else nn.Identity())
        self.conv3 = nn.Conv2d(self.width * scale, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride,
                                                    bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x, mask=None):
        """``mask`` covers the input's frames; in chaining blocks (stride 1) it also covers the output's."""
        out = apply_mask(F.relu(self.bn1(self.conv1(x))), mask)
        groups = torch.split(out, self.width, dim=1)
        outputs = []
        carried = None
        for group, conv, bn in zip(groups, self.convs, self.bns):
            if carried is not None and not self.first_in_stage:
                group = apply_mask(carried, mask) + group
            carried = F.relu(bn(conv(group)))
            outputs.append(carried)
        outputs.extend(self.pass_through_pool(group) for group in groups[len(self.convs):])
        out = self.bn3(self.conv3(torch.cat(outputs, dim=1)))
        return F.relu(out + self.shortcut(x))


@BACKBONES.register
class Res2Net(Backbone):
    """Res2Net over the (frequency, time) plane, frequency folded into channels before pooling.

    ``forward(features[B, T, input_size], lengths[B] or None) -> [B, embd_dim]``; T must be at
    least ``min_frames`` (5).
    """

    def __init__(self, input_size, embd_dim=192, pooling_type="ASP", m_channels=32, layers=(3, 4, 6, 3),
                 base_width=32, scale=2):
        super().__init__()
        self.embd_dim = embd_dim
        self.min_frames = STEM_CONV["kernel_size"] - 2 * STEM_CONV["padding"]
        if input_size < self.min_frames:
            raise ConfigError(f"Res2Net: input_size must be at least {self.min_frames}, got {input_size}")
        self.stem_conv = nn.Conv2d(1, m_channels, bias=False, **STEM_CONV)
        self.stem_bn = nn.BatchNorm2d(m_channels)
        self.stem_pool = nn.MaxPool2d(**STEM_POOL)
        freq = conv_lengths(conv_lengths(input_size, **STEM_CONV), **STEM_POOL)

        blocks = []
        in_channels = m_channels
        for stage, n_blocks in enumerate(layers):
            planes = m_channels * 2 ** stage
            stride = 1 if stage == 0 else 2
            for i in range(n_blocks):
                blocks.append(Bottle2neck(in_channels, planes, stride if i == 0 else 1, base_width, scale,
                                          first_in_stage=i == 0))
                in_channels = planes * Bottle2neck.expansion
            freq = conv_lengths(freq, kernel_size=3, stride=stride, padding=1)
        self.blocks = nn.ModuleList(blocks)

        self.pooling = build_pooling(pooling_type, in_channels * freq)
        self.pooled_bn = nn.BatchNorm1d(self.pooling.output_dim)
        self.linear = nn.Linear(self.pooling.output_dim, embd_dim)
        self.embd_bn = nn.BatchNorm1d(embd_dim)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x, lengths=None):
        if x.shape[1] < self.min_frames:
            raise AudioError(f"Res2Net needs at least {self.min_frames} feature frames, got {x.shape[1]}")
        if lengths is not None:
            lengths = lengths.to(x.device)
        x, mask = spectrogram_input(x, lengths)  # [B, 1, freq, time]
        lengths = conv_lengths(lengths, **STEM_CONV)
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        if lengths is not None:
            # After ReLU everything is >= 0, so zeros in the padding act like max-pool's -inf padding.
            x = apply_mask(x, lengths_to_mask(lengths, x.shape[-1]))
            lengths = conv_lengths(lengths, **STEM_POOL)
        x = self.stem_pool(x)
        if lengths is not None:
            mask = lengths_to_mask(lengths, x.shape[-1])
        for block in self.blocks:
            x = block(x, mask)
            if lengths is not None and block.stride > 1:
                lengths = conv_lengths(lengths, kernel_size=3, stride=block.stride, padding=1)
                mask = lengths_to_mask(lengths, x.shape[-1])
        x = self.pooled_bn(self.pooling(x.flatten(1, 2), mask))
        return self.embd_bn(self.linear(x))
