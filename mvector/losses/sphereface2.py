"""SphereFace2: one binary (target vs. not) classification per class instead of a softmax."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from mvector.errors import ConfigError
from mvector.losses.aam import additive_angular_margin
from mvector.losses.base import MarginLoss, check_number, safe_sine


def score_mapping(z, t):
    """g(z) = 2 * ((z + 1) / 2) ** t - 1: for t > 1 it stretches scores near 1 and squeezes those near -1."""
    return 2.0 * ((z + 1.0) / 2.0) ** t - 1.0


def _angular_margin_scores(cos, margin, t):
    """Type 'A': the margin moves the angle before g: g(cos(theta + m)), g(cos(theta - m))."""
    positive = additive_angular_margin(cos, margin)
    negative = cos * math.cos(margin) + safe_sine(cos) * math.sin(margin)
    return score_mapping(positive, t), score_mapping(negative, t)


def _cosine_margin_scores(cos, margin, t):
    """Type 'C': the margin moves the mapped score: g(cos) - m, g(cos) + m."""
    mapped = score_mapping(cos, t)
    return mapped - margin, mapped + margin


MARGIN_TYPES = {"A": _angular_margin_scores, "C": _cosine_margin_scores}


class SphereFace2(MarginLoss):
    """SphereFace2 with a learnable bias (it has a parameter: give it to the optimizer too).

    Wen et al., "SphereFace2: Binary Classification is All You Need for Deep Face Recognition"
    (ICLR 2022); Han et al., "Exploring Binary Classification Loss for Speaker Verification"
    (ICASSP 2023), following the 3D-Speaker / wespeaker form:
        g(z) = 2 * ((z + 1) / 2) ** t - 1
        type 'C': p = s * (g(cos_y) - m) + b,     n = s * (g(cos_j) + m) + b
        type 'A': p = s * g(cos(theta_y + m)) + b, n = s * g(cos(theta_j - m)) + b
        loss = mean over batch of  lanbuda * log(1 + e^-p) + (1 - lanbuda) * sum_j log(1 + e^n_j)
    """

    def __init__(self, margin=0.2, scale=32, lanbuda=0.7, t=3, margin_type="C"):
        super().__init__(margin)
        name = type(self).__name__
        if margin_type not in MARGIN_TYPES:
            raise ConfigError(f"{name}: unknown margin_type {margin_type!r}; valid: {', '.join(MARGIN_TYPES)}")
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ConfigError(f"{name}: 't' must be an integer >= 1, got {t!r}")
        self.scale = check_number(name, "scale", scale, low=0.0, open_low=True)
        self.lanbuda = check_number(name, "lanbuda", lanbuda, low=0.0, high=1.0)
        self.t = t
        self.margin_type = margin_type
        self.bias = nn.Parameter(torch.zeros(1))

    def pair_logits(self, cos):
        """(positive, negative) binary logits for every (sample, class) pair, both [B, C]."""
        positive, negative = MARGIN_TYPES[self.margin_type](cos, self.margin, self.t)
        bias = self.bias.float()
        return self.scale * positive + bias, self.scale * negative + bias

    def compute(self, cos, labels):
        positive, negative = self.pair_logits(cos)
        target = F.one_hot(labels, cos.shape[1]).bool()
        # softplus(x) = log(1 + e^x) without overflow for large logits.
        per_pair = torch.where(target, self.lanbuda * F.softplus(-positive),
                               (1.0 - self.lanbuda) * F.softplus(negative))
        return per_pair.sum(dim=1).mean()
