"""ResNet with squeeze-and-excitation bottleneck blocks (the reference toolkit's ResNetSE, itself
after wespeaker's ResNet).

Padding invariance: every 3x3 convolution sees zeroed padded frames, lengths follow each time
stride, the squeeze-excitation means and the pooling count valid frames only.
"""
import torch
from torch import nn

from mvector.models import BACKBONES
from mvector.models.masking import apply_mask, spectrogram_input, strided_masks
from mvector.models.pooling import build_pooling
from mvector.models.base import Backbone

# Each stage after the first halves frequency and time with a 3x3, stride-2, padding-1 conv.
_DOWN = dict(kernel_size=3, stride=2, padding=1)


class SqueezeExcitation(nn.Module):
    """Channel gates from the mean over frequency and valid frames."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x, mask):
        """Channel gates [B, C, 1, 1] for ``x`` [B, C, F, T]."""
        return self.fc(frequency_time_mean(x, mask))[:, :, None, None]


def frequency_time_mean(x, mask):
    """Mean of ``x`` [B, C, F, T] over frequency and valid frames -> [B, C]."""
    if mask is None:
        return x.mean(dim=(2, 3))
    batch, channels, freq, frames = x.shape
    weights = mask.to(x.dtype) / (mask.sum(dim=-1, keepdim=True).to(x.dtype).clamp(min=1.0) * freq)
    weights = weights.unsqueeze(2).expand(batch, 1, freq, frames).reshape(batch, 1, freq * frames)
    # One matmul against the [B, F*T, C] view: no copy in channels-last memory, unlike x * mask.
    return torch.bmm(weights, x.permute(0, 2, 3, 1).reshape(batch, freq * frames, channels)).squeeze(1)


class SEBottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided) conv, 1x1 expand, squeeze-excitation, residual shortcut."""

    expansion = 2

    def __init__(self, in_planes: int, planes: int, stride: int, se_reduction: int):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcitation(out_planes, se_reduction)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x, in_mask, out_mask):
        """``in_mask``/``out_mask``: valid frames before/after this block's stride."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(apply_mask(out, in_mask))))
        out = self.bn3(self.conv3(out))
        # shortcut + out * gate in one pass over memory.
        return self.relu(torch.addcmul(self.shortcut(x), out, self.se(out, out_mask)))


@BACKBONES.register
class ResNetSE(Backbone):
    """SE-ResNet speaker embedding network; ``layers`` blocks per stage, ``num_filters`` widths."""

    # Frames per forward pass on the CPU (mvector.inference.backends): beyond about one 4 s utterance the early
    # feature maps outgrow the caches and each utterance costs more (measured up to 1.5x at 16).
    cpu_batch_frames = 400

    def __init__(self, input_size: int, embd_dim: int = 192, pooling_type: str = "ASP",
                 layers=(3, 4, 6, 3), num_filters=(32, 64, 128, 256), se_reduction: int = 8):
        super().__init__()
        self.embd_dim = embd_dim
        self.conv1 = nn.Conv2d(1, num_filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.stages = nn.ModuleList()
        in_planes, freq = num_filters[0], input_size
        for index, (n_blocks, planes) in enumerate(zip(layers, num_filters)):
            stride = 1 if index == 0 else _DOWN["stride"]
            freq = (freq - 1) // stride + 1
            stage = nn.ModuleList()
            for i in range(n_blocks):
                stage.append(SEBottleneck(in_planes, planes, stride if i == 0 else 1, se_reduction))
                in_planes = planes * SEBottleneck.expansion
            self.stages.append(stage)
        pooled_channels = in_planes * freq
        self.pooling = build_pooling(pooling_type, pooled_channels)
        self.pooled_norm = nn.BatchNorm1d(self.pooling.output_dim)
        self.embedding = nn.Linear(self.pooling.output_dim, embd_dim)
        self.embedding_norm = nn.BatchNorm1d(embd_dim)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x, lengths=None):
        """``x`` [B, T, D] features, ``lengths`` [B] valid frames (None: all) -> [B, embd_dim]."""
        x, mask = spectrogram_input(x, lengths)
        masks = [mask] + strided_masks(lengths, x.shape[-1], len(self.stages) - 1, x.dtype, **_DOWN)
        out = self.relu(self.bn1(self.conv1(x)))
        for index, stage in enumerate(self.stages):
            in_mask = masks[max(index - 1, 0)]  # the first block of a stage does the stride
            for block in stage:
                out = block(out, in_mask, masks[index])
                in_mask = masks[index]
        pooled = self.pooling(out.flatten(1, 2), masks[-1])
        return self.embedding_norm(self.embedding(self.pooled_norm(pooled)))
