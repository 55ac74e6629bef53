"""Helpers that keep padded frames from leaking into an utterance's embedding.

Convention: sequences are ``[B, C, T]`` with integer ``lengths[B]`` in frames; a mask is a float
tensor ``[B, 1, T]`` (1 on valid frames, 0 on padding) so it broadcasts over channels.
"""
import torch


def lengths_to_mask(lengths, max_len: int, dtype=torch.float32):
    """``[B]`` lengths -> ``[B, 1, max_len]`` mask; ``lengths=None`` means every frame is valid."""
    if lengths is None:
        return None
    steps = torch.arange(max_len, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).to(dtype).unsqueeze(1)


def conv_lengths(lengths, kernel_size: int = 1, stride: int = 1, padding: int = 0, dilation: int = 1):
    """Valid output length of a convolution/pooling applied to sequences of ``lengths`` frames."""
    if lengths is None:
        return None
    span = dilation * (kernel_size - 1) + 1
    return torch.div(lengths + 2 * padding - span, stride, rounding_mode="floor") + 1


def apply_mask(x, mask):
    """Zero the padded frames of ``x`` (any ``[B, ..., T]``); a no-op without a mask."""
    if mask is None:
        return x
    if x.dim() == 4 and mask.dim() == 3:  # [B, C, F, T] feature maps of 2-D backbones
        mask = mask.unsqueeze(2)
    return x * mask.to(x.dtype)


def masked_mean(x, mask, dim: int = -1, keepdim: bool = False):
    """Mean over valid frames; ``x`` is ``[B, C, T]``."""
    if mask is None:
        return x.mean(dim=dim, keepdim=keepdim)
    mask = mask.to(x.dtype)
    return (x * mask).sum(dim=dim, keepdim=keepdim) / mask.sum(dim=dim, keepdim=keepdim).clamp(min=1.0)


def masked_mean_std(x, mask, weights=None, dim: int = -1, eps: float = 1e-5):
    """(Weighted) mean and standard deviation over valid frames of ``x`` ``[B, C, T]``.

    ``weights`` (e.g. attention, already zero on padding and summing to 1 over time) replace the
    uniform weights. The variance is clamped before the square root so gradients stay finite on
    constant inputs.
    """
    if weights is None:
        weights = torch.ones_like(x[:, :1]) if mask is None else mask.to(x.dtype)
        weights = weights / weights.sum(dim=dim, keepdim=True).clamp(min=1.0)
    mean = (x * weights).sum(dim=dim)
    var = ((x - mean.unsqueeze(dim)) ** 2 * weights).sum(dim=dim)
    return mean, var.clamp(min=eps).sqrt()


def masked_softmax(logits, mask, dim: int = -1):
    """Softmax over time that gives padded frames exactly zero weight."""
    if mask is not None:
        logits = logits.masked_fill(mask == 0, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=dim)
