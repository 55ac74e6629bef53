"""ERes2Net (Chen et al., 2023): a Res2Net-style 2-D ResNet with attentional feature fusion (AFF)
inside the deep blocks (local fusion) and across stages (global, bottom-up fusion).

Padding invariance: every 3x3 convolution sees zeroed padded frames, lengths follow each time
stride, and pooling is masked. AFF gates are 1x1 convolutions, so they never mix frames.
"""
import torch
import torch.nn.functional as F
from torch import nn

from mvector.models import BACKBONES
from mvector.models.masking import apply_mask, spectrogram_input, strided_masks
from mvector.models.pooling import build_pooling
from mvector.models.base import Backbone

# Every time-strided op here (3x3/pad 1 or 1x1/pad 0, stride 2) keeps ceil(T/2) frames.
_DOWN = dict(kernel_size=3, stride=2, padding=1)


def _clipped_relu():
    """ReLU clipped at 20, as in ERes2Net, keeps activations bounded."""
    return nn.Hardtanh(0.0, 20.0, inplace=True)


class AFF(nn.Module):
    """Attentional feature fusion: a position-wise gate in (0, 2) blends two same-shape maps."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        inner = channels // reduction
        self.gate = nn.Sequential(nn.Conv2d(channels * 2, inner, 1), nn.BatchNorm2d(inner), nn.SiLU(inplace=True),
                                  nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x, y):
        # x * (1 + t) + y * (1 - t), in fewer passes over memory.
        t = torch.tanh(self.gate(torch.cat([x, y], dim=1)))
        return torch.addcmul(x + y, t, x - y)


class ERes2NetBlock(nn.Module):
    """1x1 conv, ``scale`` chained 3x3 convs over channel groups (each group also receives the
    previous group's output, added or AFF-fused), 1x1 conv, plus a residual shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, expansion: int, base_width: int,
                 scale: int, fuse: bool):
        super().__init__()
        self.width = planes * base_width // 64
        out_planes = planes * expansion
        self.act = _clipped_relu()
        self.conv1 = nn.Conv2d(in_planes, self.width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(self.width, self.width, 3, padding=1, bias=False) for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(scale))
        self.fusions = nn.ModuleList(AFF(self.width) for _ in range(scale - 1)) if fuse else None
        self.conv3 = nn.Conv2d(self.width * scale, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x, mask):
        """``mask`` is at the output resolution (the block's stride is in its first 1x1 conv)."""
        groups = self.act(self.bn1(self.conv1(x))).split(self.width, dim=1)
        outputs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i == 0:
                h = groups[0]
            elif self.fusions is None:
                h = h + groups[i]
            else:
                h = self.fusions[i - 1](h, groups[i])
            h = self.act(bn(conv(apply_mask(h, mask))))
            outputs.append(h)
        out = self.bn3(self.conv3(torch.cat(outputs, dim=1)))
        return self.act(out + self.shortcut(x))


@BACKBONES.register
class ERes2Net(Backbone):
    """ERes2Net speaker embedding network (3D-Speaker's ERes2Net, reference-toolkit defaults).

    Stages 1-2 use plain Res2Net blocks, stages 3-4 fuse groups with AFF; each stage's output is
    downsampled (3x3, stride 2) and AFF-fused into the next stage's output.
    """

    # Frames per forward pass on the CPU (mvector.inference.backends): beyond about one 4 s utterance the early
    # feature maps outgrow the caches and each utterance costs more (measured up to 1.5x at 16).
    cpu_batch_frames = 400

    def __init__(self, input_size: int, embd_dim: int = 192, pooling_type: str = "TSTP",
                 num_blocks=(3, 4, 6, 3), m_channels: int = 32, expansion: int = 2,
                 base_width: int = 32, scale: int = 2):
        super().__init__()
        self.embd_dim = embd_dim
        self.conv1 = nn.Conv2d(1, m_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.stages = nn.ModuleList()
        stage_channels = []
        in_planes = m_channels
        for index, n_blocks in enumerate(num_blocks):
            planes = m_channels * 2 ** index
            stage = nn.ModuleList()
            for i in range(n_blocks):
                stride = 2 if index > 0 and i == 0 else 1
                stage.append(ERes2NetBlock(in_planes, planes, stride, expansion, base_width, scale, fuse=index >= 2))
                in_planes = planes * expansion
            self.stages.append(stage)
            stage_channels.append(in_planes)
        self.downsamples = nn.ModuleList(nn.Conv2d(c_in, c_out, bias=False, **_DOWN)
                                         for c_in, c_out in zip(stage_channels, stage_channels[1:]))
        self.fusions = nn.ModuleList(AFF(c) for c in stage_channels[1:])
        freq = input_size
        for _ in num_blocks[1:]:
            freq = (freq - 1) // 2 + 1
        self.pooling = build_pooling(pooling_type, stage_channels[-1] * freq)
        self.embedding = nn.Linear(self.pooling.output_dim, embd_dim)

    def forward(self, x, lengths=None):
        """``x`` [B, T, D] features, ``lengths`` [B] valid frames (None: all) -> [B, embd_dim]."""
        x, mask = spectrogram_input(x, lengths)
        masks = [mask] + strided_masks(lengths, x.shape[-1], len(self.stages) - 1, x.dtype, **_DOWN)
        out = F.relu(self.bn1(self.conv1(x)))
        for index, stage in enumerate(self.stages):
            for block in stage:
                out = block(out, masks[index])
            if index == 0:
                fused = out
            else:
                down = self.downsamples[index - 1](apply_mask(fused, masks[index - 1]))
                fused = self.fusions[index - 1](out, down)
        return self.embedding(self.pooling(fused.flatten(1, 2), masks[-1]))
