"""CAM++ (Wang et al., 2023): a small 2-D convolutional front end (FCM) followed by a densely
connected TDNN whose layers are gated by context-aware masking (CAM).

Padding invariance: padded frames are zeroed before every convolution that mixes frames, the CAM
context (utterance mean + 100-frame segment means) counts valid frames only, and pooling is masked.
"""
import torch
import torch.nn.functional as F
from torch import nn

from mvector.models import BACKBONES
from mvector.models.masking import apply_mask, conv_lengths, lengths_to_mask, spectrogram_input
from mvector.models.pooling import build_pooling
from mvector.models.base import Backbone

# The input TDNN layer halves the frame rate; every later layer keeps it.
_TDNN = dict(kernel_size=5, stride=2, padding=2)
# Frames per FCM pass in CPU inference. The FCM's 2-D maps hold 32 x 80 floats per frame (3 MB per
# 3 s): a whole batch's maps exceed what the allocator keeps for reuse, so every layer would map and
# fault in fresh pages. Slices of about 1,200 frames avoid that (16 x 3 s: about a quarter faster).
FCM_CPU_FRAMES = 1200


def _halve(size: int) -> int:
    """Output size of a kernel-3, stride-2, padding-1 convolution."""
    return (size - 1) // 2 + 1


class FreqResBlock(nn.Module):
    """Basic 2-D residual block that may stride the frequency axis, never time."""

    def __init__(self, in_channels: int, out_channels: int, freq_stride: int):
        super().__init__()
        stride = (freq_stride, 1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if freq_stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x, mask):
        """``x`` [B, C, F, T] with zero padded frames -> same layout, padded frames zeroed again."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(apply_mask(out, mask)))
        return apply_mask(F.relu(out + self.shortcut(x)), mask)


class FCM(nn.Module):
    """Front-end convolution module: shrinks frequency 8x so the TDNN sees a [B, C*F/8, T] map."""

    def __init__(self, feat_dim: int, channels: int = 32, blocks_per_stage=(2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.blocks = nn.ModuleList(FreqResBlock(channels, channels, 2 if i == 0 else 1)
                                    for n in blocks_per_stage for i in range(n))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        freq = feat_dim
        for _ in range(len(blocks_per_stage) + 1):
            freq = _halve(freq)
        self.out_channels = channels * freq

    def forward(self, x, mask):
        """``x`` [B, 1, F, T] channels-last map with zero padded frames (``spectrogram_input``)
        -> [B, C*F', T] (time length unchanged)."""
        out = apply_mask(F.relu(self.bn1(self.conv1(x))), mask)
        for block in self.blocks:
            out = block(out, mask)
        out = F.relu(self.bn2(self.conv2(out)))
        return out.flatten(1, 2)


def segment_context(x, mask, seg_len: int):
    """Utterance mean plus the mean of each ``seg_len``-frame segment, over valid frames only.

    ``x`` [B, C, T] must be zero on padded frames. Returns ``[B, C, n_segments]``: the context is
    constant within a segment, so the gate is computed once per segment, not once per frame.
    """
    frames = x.shape[-1]
    n_seg = (frames + seg_len - 1) // seg_len
    pad = n_seg * seg_len - frames
    sums = F.pad(x, (0, pad)).unflatten(-1, (n_seg, seg_len)).sum(-1)
    if mask is None:
        starts = torch.arange(n_seg, device=x.device) * seg_len
        counts = (frames - starts).clamp(max=seg_len).to(x.dtype)
    else:
        counts = F.pad(mask.to(x.dtype), (0, pad)).unflatten(-1, (n_seg, seg_len)).sum(-1)
    utterance_mean = sums.sum(-1, keepdim=True) / counts.sum(-1, keepdim=True).clamp(min=1.0)
    return utterance_mean + sums / counts.clamp(min=1.0)


class CAMDenseLayer(nn.Module):
    """BN-ReLU-1x1 bottleneck, then a dilated conv gated by its segment-level context (the CAM)."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck: int, kernel_size: int,
                 dilation: int, seg_len: int, context_reduction: int = 2):
        super().__init__()
        self.seg_len = seg_len
        self.bn_in = nn.BatchNorm1d(in_channels)
        self.bottleneck = nn.Conv1d(in_channels, bottleneck, 1, bias=False)
        self.bn_mid = nn.BatchNorm1d(bottleneck)
        self.local = nn.Conv1d(bottleneck, growth_rate, kernel_size, dilation=dilation,
                               padding=(kernel_size - 1) // 2 * dilation, bias=False)
        self.context_down = nn.Conv1d(bottleneck, bottleneck // context_reduction, 1)
        self.context_up = nn.Conv1d(bottleneck // context_reduction, growth_rate, 1)

    def forward(self, x, mask):
        h = F.relu(self.bn_mid(self.bottleneck(F.relu(self.bn_in(x)))))
        h = apply_mask(h, mask)
        local = self.local(h)
        context = segment_context(h, mask, self.seg_len)
        gate = torch.sigmoid(self.context_up(F.relu(self.context_down(context))))
        # Each frame takes its segment's gate: [B, C, n] -> [B, C, T]. A gather by frame index, not an
        # expand-and-crop, so an exported graph keeps T symbolic.
        segment_of_frame = torch.arange(local.shape[-1], device=local.device) // self.seg_len
        gate = gate.index_select(-1, segment_of_frame)
        return local * gate


class CAMDenseBlock(nn.Module):
    """DenseNet-style block: each layer sees the concatenation of all earlier outputs."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bottleneck: int,
                 kernel_size: int, dilation: int, seg_len: int):
        super().__init__()
        self.layers = nn.ModuleList(
            CAMDenseLayer(in_channels + i * growth_rate, growth_rate, bottleneck, kernel_size, dilation, seg_len)
            for i in range(num_layers))
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x, mask):
        for layer in self.layers:
            x = torch.cat([x, layer(x, mask)], dim=1)
        return x


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv that compresses the dense block's channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.BatchNorm1d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv1d(in_channels, out_channels, 1, bias=False))


@BACKBONES.register
class CAMPPlus(Backbone):
    """CAM++ speaker embedding network (3D-Speaker's CAM++, reference-toolkit defaults).

    ``block_layers``/``block_dilations`` describe the three dense blocks; each is followed by a
    transition that halves the channels. ``seg_len`` is the CAM segment length in frames (after
    the input TDNN's 2x time stride). ``pooling_args`` are the pooling layer's own options (e.g. TSTP's
    ``unbiased``).
    """

    def __init__(self, input_size: int, embd_dim: int = 192, pooling_type: str = "TSTP",
                 growth_rate: int = 32, bn_size: int = 4, init_channels: int = 128,
                 fcm_channels: int = 32, block_layers=(12, 24, 16), block_dilations=(1, 2, 2),
                 kernel_size: int = 3, seg_len: int = 100, pooling_args: dict = None):
        super().__init__()
        self.embd_dim = embd_dim
        self.head = FCM(input_size, fcm_channels)
        self.tdnn = nn.Sequential(nn.Conv1d(self.head.out_channels, init_channels, bias=False, **_TDNN),
                                  nn.BatchNorm1d(init_channels), nn.ReLU(inplace=True))
        channels = init_channels
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for num_layers, dilation in zip(block_layers, block_dilations):
            block = CAMDenseBlock(num_layers, channels, growth_rate, bn_size * growth_rate,
                                  kernel_size, dilation, seg_len)
            self.blocks.append(block)
            channels = block.out_channels // 2
            self.transitions.append(Transition(block.out_channels, channels))
        self.out_norm = nn.Sequential(nn.BatchNorm1d(channels), nn.ReLU(inplace=True))
        self.pooling = build_pooling(pooling_type, channels, **(pooling_args or {}))
        self.embedding = nn.Linear(self.pooling.output_dim, embd_dim, bias=False)
        self.embedding_norm = nn.BatchNorm1d(embd_dim, affine=False)
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x, lengths=None):
        """``x`` [B, T, D] features, ``lengths`` [B] valid frames (None: all) -> [B, embd_dim]."""
        x, mask = spectrogram_input(x, lengths)
        x = apply_mask(self._run_head(x, mask), mask)
        x = self.tdnn(x)
        lengths = conv_lengths(lengths, **_TDNN)
        mask = lengths_to_mask(lengths, x.shape[-1], x.dtype)
        for block, transition in zip(self.blocks, self.transitions):
            x = transition(block(x, mask))
        x = self.pooling(self.out_norm(x), mask)
        return self.embedding_norm(self.embedding(x))

    def _run_head(self, x, mask):
        """The FCM over the batch, in slices of FCM_CPU_FRAMES in CPU inference (it is per utterance)."""
        rows = max(1, FCM_CPU_FRAMES // x.shape[-1])
        if (self.training or x.device.type != "cpu" or rows >= x.shape[0]
                or torch.compiler.is_exporting()):  # an exported graph keeps the batch size symbolic
            return self.head(x, mask)
        masks = [None] * len(range(0, x.shape[0], rows)) if mask is None else mask.split(rows)
        return torch.cat([self.head(part, part_mask) for part, part_mask in zip(x.split(rows), masks)])
