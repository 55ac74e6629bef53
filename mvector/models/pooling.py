"""Length-aware temporal pooling layers, shared by every backbone.

Input ``x`` is ``[B, C, T]`` with an optional float mask ``[B, 1, T]`` (see ``masking.py``); output
is ``[B, output_dim]``. Padded frames never contribute, so pooling is padding-invariant.
"""
import torch
from torch import nn

from mvector.models.masking import masked_mean, masked_mean_std, masked_mean_var, masked_softmax, valid_frames
from mvector.errors import ConfigError
from mvector.registry import Registry

POOLINGS = Registry("pooling")


@POOLINGS.register(name="TAP")
class TemporalAveragePooling(nn.Module):
    """Mean over time."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.output_dim = in_dim

    def forward(self, x, mask=None):
        return masked_mean(x, mask)


@POOLINGS.register(name="TSP")
class TemporalStatisticsPooling(nn.Module):
    """Mean and variance over time (the reference toolkit's TSP)."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.output_dim = in_dim * 2

    def forward(self, x, mask=None):
        mean, std = masked_mean_std(x, mask)
        return torch.cat([mean, std * std], dim=1)


@POOLINGS.register(name="TSTP")
class TemporalStatsPool(nn.Module):
    """Mean and standard deviation over time (x-vector statistics pooling).

    ``unbiased`` divides the variance by N-1 (``torch.std``'s default, which 3D-Speaker's models were
    trained with); ``var_floor`` clamps the variance before the square root so gradients stay finite
    on a constant channel.
    """

    def __init__(self, in_dim: int, unbiased: bool = False, var_floor: float = 1e-5):
        super().__init__()
        if not var_floor >= 0:
            raise ConfigError(f"TSTP: 'var_floor' must be >= 0, got {var_floor!r}")
        self.output_dim = in_dim * 2
        self.unbiased = bool(unbiased)
        self.var_floor = float(var_floor)

    def forward(self, x, mask=None):
        mean, var = masked_mean_var(x, mask)
        if self.unbiased:
            frames = valid_frames(x, mask)
            var = var * frames / (frames - 1).clamp(min=1.0)
        return torch.cat([mean, var.clamp(min=self.var_floor).sqrt()], dim=1)


@POOLINGS.register(name="SAP")
class SelfAttentivePooling(nn.Module):
    """Attention-weighted mean over time (Cai et al., 2018)."""

    def __init__(self, in_dim: int, bottleneck_dim: int = 128):
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(in_dim, bottleneck_dim, 1), nn.Tanh(),
                                       nn.Conv1d(bottleneck_dim, 1, 1))
        self.output_dim = in_dim

    def forward(self, x, mask=None):
        weights = masked_softmax(self.attention(x).float(), mask).to(x.dtype)
        return (x * weights).sum(dim=-1)


@POOLINGS.register(name="ASP")
class AttentiveStatisticsPooling(nn.Module):
    """Channel-wise attentive mean and standard deviation (ECAPA-TDNN).

    With ``global_context`` the attention also sees each utterance's mean and std, which is what
    makes ECAPA's pooling aware of the whole utterance; those statistics use valid frames only.
    """

    def __init__(self, in_dim: int, bottleneck_dim: int = 128, global_context: bool = True):
        super().__init__()
        self.global_context = global_context
        attn_in = in_dim * 3 if global_context else in_dim
        self.attention = nn.Sequential(nn.Conv1d(attn_in, bottleneck_dim, 1), nn.ReLU(),
                                       nn.BatchNorm1d(bottleneck_dim), nn.Tanh(),
                                       nn.Conv1d(bottleneck_dim, in_dim, 1))
        self.output_dim = in_dim * 2

    def forward(self, x, mask=None):
        scores = self._scores_in_context(x, mask) if self.global_context else self.attention(x)
        weights = masked_softmax(scores.float(), mask).to(x.dtype)
        return torch.cat(masked_mean_std(x, mask, weights=weights), dim=1)

    def _scores_in_context(self, x, mask):
        """The attention over ``[x; mean; std]`` at every frame, without building that input: the
        first 1x1 convolution is linear and mean and std are the same at every frame, so their part
        is computed once per utterance (two thirds of that layer's work saved; same weights)."""
        first = self.attention[0]
        on_frames, on_mean, on_std = first.weight.squeeze(-1).split(x.shape[1], dim=1)
        mean, std = masked_mean_std(x, mask)
        per_utterance = nn.functional.linear(mean, on_mean, first.bias) + nn.functional.linear(std, on_std)
        hidden = nn.functional.conv1d(x, on_frames.unsqueeze(-1)) + per_utterance.unsqueeze(-1)
        return self.attention[1:](hidden)


def build_pooling(name: str, in_dim: int, **kwargs) -> nn.Module:
    """Build a pooling layer by name ('ASP', 'SAP', 'TSP', 'TAP', 'TSTP')."""
    return POOLINGS.build(name, in_dim, **kwargs)
