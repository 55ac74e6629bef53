"""``SpecAugment``: frequency and time masks on a batch of features, inside each utterance's valid frames."""
import torch
from torch import nn

from mvector.errors import ConfigError


class SpecAugment(nn.Module):
    """Masks random frequency bands and time spans of features ``[B, T, D]`` on their own device.

    Each utterance is masked with probability ``prob``; time masks fall inside its valid frames
    (``frame_lengths``), so padding never absorbs a mask. Masked values become the utterance's
    mean over its valid frames (0 for mean-normalised features). Identity in eval mode.
    """

    def __init__(self, freq_mask_width=(0, 8), time_mask_width=(0, 10), num_freq_masks=1, num_time_masks=1,
                 prob=0.5):
        super().__init__()
        for name, width in (("freq_mask_width", freq_mask_width), ("time_mask_width", time_mask_width)):
            if len(width) != 2 or not 0 <= width[0] <= width[1]:
                raise ConfigError(f"SpecAugment: {name} must be (min, max) with 0 <= min <= max, got {width!r}")
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"SpecAugment: prob must be in [0, 1], got {prob!r}")
        self.freq_mask_width = tuple(int(w) for w in freq_mask_width)
        self.time_mask_width = tuple(int(w) for w in time_mask_width)
        self.num_freq_masks = int(num_freq_masks)
        self.num_time_masks = int(num_time_masks)
        self.prob = float(prob)

    @classmethod
    def from_config(cls, conf: dict):
        """From a validated augmentation config (``load_augmentation_config``)."""
        spec = conf["spec_aug"]
        return cls(spec["freq_mask_width"], spec["time_mask_width"], spec["num_freq_masks"],
                   spec["num_time_masks"], spec["prob"])

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor = None) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return features
        batch, frames, dims = features.shape
        device = features.device
        if frame_lengths is None:
            frame_lengths = torch.full((batch,), frames, device=device, dtype=torch.long)
        frame_lengths = frame_lengths.to(device=device, dtype=torch.long)
        time_mask = self._spans(batch, frames, frame_lengths, self.time_mask_width, self.num_time_masks, device)
        all_dims = torch.full((batch,), dims, device=device, dtype=torch.long)
        freq_mask = self._spans(batch, dims, all_dims, self.freq_mask_width, self.num_freq_masks, device)
        chosen = torch.rand(batch, device=device) < self.prob
        valid = torch.arange(frames, device=device)[None, :] < frame_lengths[:, None]
        mask = (time_mask[:, :, None] | freq_mask[:, None, :]) & (chosen[:, None] & valid)[:, :, None]
        weights = valid.to(features.dtype)[:, :, None]
        mean = (features * weights).sum(dim=(1, 2)) / (weights.sum(dim=(1, 2)) * dims).clamp(min=1)
        return torch.where(mask, mean[:, None, None].to(features.dtype), features)

    @staticmethod
    def _spans(batch, size, limits, width_range, count, device):
        """``count`` random spans per row, each of a width in ``width_range`` inside [0, limit)."""
        positions = torch.arange(size, device=device)[None, :]
        mask = torch.zeros(batch, size, dtype=torch.bool, device=device)
        for _ in range(count):
            width = torch.randint(width_range[0], width_range[1] + 1, (batch,), device=device)
            width = torch.minimum(width, limits)
            start = (torch.rand(batch, device=device) * (limits - width + 1)).long()
            mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
        return mask
