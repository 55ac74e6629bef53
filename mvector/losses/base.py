"""What every loss shares: input checks, float32 maths outside autocast, and the margin setter."""
import torch
from torch import nn

from mvector.errors import ConfigError

# Keeps sqrt(1 - cos^2) away from 0, where its derivative is infinite (cos exactly +-1).
SINE_EPS = 1e-7


def safe_sine(cos):
    """sin(theta) for cos(theta) in [-1, 1], with a finite gradient even at cos = +-1."""
    return torch.sqrt((1.0 - cos * cos).clamp(min=SINE_EPS))


def check_number(owner, key, value, low=None, high=None, open_low=False, open_high=False):
    """Raise ConfigError unless ``value`` is a real number within the bounds; return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{owner}: '{key}' must be a number, got {value!r}")
    rules = []
    if low is not None:
        rules.append((value > low if open_low else value >= low, f"{'>' if open_low else '>='} {low}"))
    if high is not None:
        rules.append((value < high if open_high else value <= high, f"{'<' if open_high else '<='} {high}"))
    if not all(ok for ok, _ in rules):
        raise ConfigError(f"{owner}: '{key}' must be {' and '.join(text for _, text in rules)}, got {value!r}")
    return float(value)


def check_labels(owner, labels, batch_size, num_classes=None):
    """Validate integer labels [batch_size] (in [0, num_classes) if given); return them as int64."""
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != batch_size:
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ConfigError(f"{owner}: labels must be a [batch] tensor with batch {batch_size}, got {shape}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ConfigError(f"{owner}: labels must be integer class ids, got dtype {labels.dtype}")
    # An out-of-range id would otherwise surface as an opaque index error (or a CUDA device assert).
    if num_classes is not None and labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ConfigError(f"{owner}: labels must lie in [0, {num_classes}), got range [{low}, {high}]")
    return labels.long()


def check_batch(owner, outputs, labels):
    """Validate head outputs [B, C] and their labels [B]; return the labels as int64."""
    if not torch.is_tensor(outputs) or outputs.dim() != 2:
        shape = tuple(outputs.shape) if torch.is_tensor(outputs) else type(outputs).__name__
        raise ConfigError(f"{owner}: outputs must be a [batch, classes] tensor, got {shape}")
    return check_labels(owner, labels, outputs.shape[0], outputs.shape[1])


class Loss(nn.Module):
    """Base of classification losses: ``forward(outputs, labels) -> scalar``.

    ``input_type`` tells the trainer which head output the loss expects ('cosine' or 'logits');
    ``needs_embeddings`` tells it whether to pass the embeddings as well; ``needs_speaker_batches``
    that batches must be P speakers x K utterances (dataset_conf.speakers_per_batch and
    utterances_per_speaker).
    """

    input_type = "cosine"
    needs_embeddings = False
    needs_speaker_batches = False

    def forward(self, outputs, labels):
        labels = check_batch(type(self).__name__, outputs, labels)
        # Margins and scales of ~30 need float32: bf16 cosines are only good to ~1e-2.
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            return self.compute(outputs.float(), labels)

    def compute(self, outputs, labels):
        raise NotImplementedError


class MarginLoss(Loss):
    """A loss whose margin the margin scheduler can change during training via ``update``."""

    def __init__(self, margin):
        super().__init__()
        self.update(margin)

    def update(self, margin):
        """Set the current margin (derived constants are computed from it in each forward)."""
        self.margin = check_number(type(self).__name__, "margin", margin, low=0.0)
