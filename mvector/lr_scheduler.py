"""Per-step learning-rate schedules; configs give their lengths in epochs.

The trainer builds them as ``SCHEDULERS.build(name, optimizer, steps_per_epoch, max_epoch, **args)``
and calls ``step()`` after every optimizer step, so resuming mid-epoch restores the exact LR.
"""
import math

from torch.optim.lr_scheduler import LambdaLR

from mvector.registry import Registry

SCHEDULERS = Registry("LR scheduler")


@SCHEDULERS.register
class WarmupCosineLR(LambdaLR):
    """Linear warm-up from 0 to the optimizer's lr, then cosine decay to ``min_lr``."""

    def __init__(self, optimizer, steps_per_epoch: int, max_epoch: int, warmup_epochs: float = 1.0,
                 min_lr: float = 1e-5):
        self.warmup_steps = max(0, int(round(warmup_epochs * steps_per_epoch)))
        self.total_steps = max(1, steps_per_epoch * max_epoch)
        base = optimizer.param_groups[0]["lr"]
        self.min_ratio = min(1.0, min_lr / base) if base > 0 else 0.0
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@SCHEDULERS.register
class WarmupConstantLR(LambdaLR):
    """Linear warm-up, then the optimizer's lr unchanged (for fine-tuning)."""

    def __init__(self, optimizer, steps_per_epoch: int, max_epoch: int, warmup_epochs: float = 0.0):
        self.warmup_steps = max(0, int(round(warmup_epochs * steps_per_epoch)))
        super().__init__(optimizer, lambda step: min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0)
