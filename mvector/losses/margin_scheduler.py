"""Margin warm-up: train without (or with a small) margin first, then ramp it to its final value.

As in wespeaker: a large margin from step 0 keeps a randomly initialised model from converging.
"""
from mvector.errors import ConfigError
from mvector.losses.base import MarginLoss, check_number

# The exponential ramp follows wespeaker's 1 - 1e-3 ** progress (most of the increase early),
# rescaled so it ends exactly at the final margin instead of 99.9% of the way there.
EXP_RAMP_FLOOR = 1e-3

RAMPS = {
    "linear": lambda progress: progress,
    "exp": lambda progress: (1.0 - EXP_RAMP_FLOOR ** progress) / (1.0 - EXP_RAMP_FLOOR),
}


def _check_step(key, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"MarginScheduler: '{key}' must be an integer step >= 0, got {value!r}")
    return value


class MarginScheduler:
    """Sets ``loss.update(margin)`` from the global step.

    Before ``increase_start_step`` the margin is ``initial_margin`` (usually 0); it then ramps
    ('exp' or 'linear') to ``final_margin`` at ``fix_start_step`` and stays there.
    """

    def __init__(self, loss, initial_margin, final_margin, increase_start_step, fix_start_step,
                 increase_type="exp"):
        if not isinstance(loss, MarginLoss):
            raise ConfigError(f"MarginScheduler: loss {type(loss).__name__} has no margin to schedule "
                              f"(it is not a MarginLoss)")
        if increase_type not in RAMPS:
            raise ConfigError(f"MarginScheduler: unknown increase_type {increase_type!r}; "
                              f"valid: {', '.join(sorted(RAMPS))}")
        self.loss = loss
        self.initial_margin = check_number("MarginScheduler", "initial_margin", initial_margin, low=0.0)
        self.final_margin = check_number("MarginScheduler", "final_margin", final_margin, low=0.0)
        self.increase_start_step = _check_step("increase_start_step", increase_start_step)
        self.fix_start_step = _check_step("fix_start_step", fix_start_step)
        if self.fix_start_step < self.increase_start_step:
            raise ConfigError(f"MarginScheduler: fix_start_step ({fix_start_step}) must not come before "
                              f"increase_start_step ({increase_start_step})")
        self.increase_type = increase_type
        self.step(0)

    def margin_at(self, global_step):
        if global_step >= self.fix_start_step:
            return self.final_margin
        if global_step < self.increase_start_step:
            return self.initial_margin
        progress = (global_step - self.increase_start_step) / (self.fix_start_step - self.increase_start_step)
        return self.initial_margin + (self.final_margin - self.initial_margin) * RAMPS[self.increase_type](progress)

    def step(self, global_step):
        """Apply the margin for ``global_step`` to the loss and return it."""
        self.last_step = _check_step("global_step", global_step)
        self.margin = self.margin_at(global_step)
        self.loss.update(self.margin)
        return self.margin

    def state_dict(self):
        return {"last_step": self.last_step, "margin": self.margin}

    def load_state_dict(self, state):
        """Restore the step and re-apply the exact margin in use when the state was saved."""
        missing = [key for key in ("last_step", "margin") if key not in state]
        if missing:
            raise ConfigError(f"MarginScheduler state is missing {', '.join(missing)}; got keys {sorted(state)}")
        self.last_step = _check_step("last_step", state["last_step"])
        self.margin = check_number("MarginScheduler state", "margin", state["margin"], low=0.0)
        self.loss.update(self.margin)
