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
    """Valid output length of a convolution/pooling applied to sequences of ``lengths`` frames
    (a ``[B]`` tensor, or an int such as a feature map's width)."""
    if lengths is None:
        return None
    span = dilation * (kernel_size - 1) + 1
    return (lengths + 2 * padding - span) // stride + 1  # floor division for ints and tensors alike


def spectrogram_input(x, lengths):
    """``[B, T, D]`` features -> (``[B, 1, D, T]`` channels-last map with padded frames zeroed, its mask).

    Channels-last memory makes 2-D convolutions much faster on CPU. Padding is zeroed with
    masked_fill, not ``x * mask``: padded frames may hold inf/NaN, and 0 * inf is NaN.
    """
    mask = lengths_to_mask(lengths, x.shape[1], x.dtype)
    if mask is not None:
        # Before the layout change: a one-channel map is both layouts, and a fill may pick the other.
        x = x.masked_fill(mask.transpose(1, 2) == 0, 0.0)
    return x.transpose(1, 2).unsqueeze(1).contiguous(memory_format=torch.channels_last), mask


def strided_masks(lengths, frames: int, steps: int, dtype, **conv):
    """Masks after each of ``steps`` successive time-strided convs (``conv``: their kernel_size,
    stride, padding) of a ``frames``-wide input -> list of ``steps`` masks (None without lengths)."""
    masks = []
    for _ in range(steps):
        lengths, frames = conv_lengths(lengths, **conv), conv_lengths(frames, **conv)
        masks.append(lengths_to_mask(lengths, frames, dtype))
    return masks


def apply_mask(x, mask):
    """Zero the padded frames of ``x`` (any ``[B, ..., T]``); a no-op without a mask.

    A fill rather than a product, so padding that holds inf or NaN cannot leak (0 * NaN is NaN).
    Eager, the fill runs in place on a copy that keeps ``x``'s memory layout (``masked_fill`` hands
    back a channels-first copy of a channels-last map); under torch.export it is ``masked_fill``,
    whose output simply takes ``x``'s shape: with ``where``, a product or that in-place fill the
    exporter demands that Res2Net's deepest time axis is longer than one frame."""
    if mask is None:
        return x
    if x.dim() == 4 and mask.dim() == 3:  # [B, C, F, T] feature maps of 2-D backbones
        mask = mask.unsqueeze(2)
    if torch.compiler.is_exporting():
        return x.masked_fill(mask == 0, 0.0)
    return x.clone().masked_fill_(mask == 0, 0.0)


def masked_mean(x, mask, dim: int = -1, keepdim: bool = False):
    """Mean over valid frames; ``x`` is ``[B, C, T]``."""
    if mask is None:
        return x.mean(dim=dim, keepdim=keepdim)
    mask = mask.to(x.dtype)
    return (x * mask).sum(dim=dim, keepdim=keepdim) / mask.sum(dim=dim, keepdim=keepdim).clamp(min=1.0)


def masked_mean_var(x, mask, weights=None, dim: int = -1):
    """(Weighted) mean and biased variance over valid frames of ``x`` ``[B, C, T]``.

    ``weights`` (e.g. attention, already zero on padding and summing to 1 over time) replace the
    uniform weights.
    """
    if weights is None:
        weights = torch.ones_like(x[:, :1]) if mask is None else mask.to(x.dtype)
        weights = weights / weights.sum(dim=dim, keepdim=True).clamp(min=1.0)
    mean = (x * weights).sum(dim=dim)
    var = ((x - mean.unsqueeze(dim)) ** 2 * weights).sum(dim=dim)
    return mean, var


def masked_mean_std(x, mask, weights=None, dim: int = -1, eps: float = 1e-5):
    """(Weighted) mean and standard deviation over valid frames of ``x`` ``[B, C, T]``; the variance
    is clamped at ``eps`` before the square root so gradients stay finite on constant inputs."""
    mean, var = masked_mean_var(x, mask, weights, dim)
    return mean, var.clamp(min=eps).sqrt()


def valid_frames(x, mask):
    """``[B, 1]`` number of valid frames of each row of ``x`` ``[B, C, T]``."""
    if mask is None:
        return x.new_full((x.shape[0], 1), x.shape[-1])
    return mask.to(x.dtype).sum(dim=-1)


def masked_softmax(logits, mask, dim: int = -1):
    """Softmax over time that gives padded frames exactly zero weight."""
    if mask is not None:
        logits = logits.masked_fill(mask == 0, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=dim)
