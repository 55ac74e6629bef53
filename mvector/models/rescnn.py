"""Deep Speaker's ResCNN (Li et al., 2017): stages of a 5x5 stride-2 convolution and residual
blocks of two 3x3 convolutions, clipped ReLUs, 64 -> 128 -> 256 -> 512 channels, then the mean
over frequency and valid frames (512-d) and an affine projection to the embedding.

Padding invariance: padded frames are zeroed before every convolution and lengths follow each
time stride, so a padded frame never reaches a valid one; the pooling counts valid frames only.
"""
import torch
from torch import nn

from mvector.models import BACKBONES
from mvector.models.base import Backbone
from mvector.models.masking import apply_mask, spectrogram_input, strided_masks
from mvector.models.pooling import build_pooling

# Each stage opens with this convolution: it halves frequency and time.
_DOWN = dict(kernel_size=5, stride=2, padding=2)
# Deep Speaker clips its ReLUs at 20.
CLIP = 20.0


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x, mask):
        out = torch.clamp(self.bn1(self.conv1(apply_mask(x, mask))), 0.0, CLIP)
        out = self.bn2(self.conv2(apply_mask(out, mask)))
        return torch.clamp(out + x, 0.0, CLIP)


@BACKBONES.register
class ResCNN(Backbone):
    """``channels`` per stage, ``blocks`` residual blocks in each; ``forward(features[B, T, D],
    lengths[B]) -> [B, embd_dim]``."""

    cpu_batch_frames = 400  # 2-D feature maps: CPU batches are split, as for the other ResNets

    def __init__(self, input_size, embd_dim=512, channels=(64, 128, 256, 512), blocks=3, pooling_type="TAP"):
        super().__init__()
        self.embd_dim = embd_dim
        self.downs = nn.ModuleList()
        self.stages = nn.ModuleList()
        previous = 1
        for width in channels:
            self.downs.append(nn.Sequential(nn.Conv2d(previous, width, bias=False, **_DOWN), nn.BatchNorm2d(width)))
            self.stages.append(nn.ModuleList(ResidualBlock(width) for _ in range(blocks)))
            previous = width
        self.pooling = build_pooling(pooling_type, previous)
        self.projection = nn.Linear(self.pooling.output_dim, embd_dim)

    def forward(self, x, lengths=None):
        x, mask = spectrogram_input(x, lengths)
        masks = [mask] + strided_masks(lengths, x.shape[-1], len(self.downs), x.dtype, **_DOWN)
        for index, (down, blocks) in enumerate(zip(self.downs, self.stages)):
            x = torch.clamp(down(apply_mask(x, masks[index])), 0.0, CLIP)
            for block in blocks:
                x = block(x, masks[index + 1])
        pooled = self.pooling(x.mean(dim=2), masks[-1])  # the mean over frequency, then over valid frames
        return self.projection(pooled)
