"""Sequence encoders: LSTMs (as in Resemblyzer's GE2E encoder and the LSTM of the course project
SpeakerRecognitionFromScratch) and a Transformer encoder over subsampled frames.

Padding invariance: a forward LSTM reads frames in order, so padding after an utterance never
reaches its valid outputs; the backward direction of a bidirectional layer reads each utterance
reversed within its own length (a gather, not packed sequences, so the graph exports). While
torch.export traces, the LSTMs run as a scan over frames (nn.LSTM's export unrolls the traced length
into the graph, which then takes no other length); the
Transformer masks padded keys in every attention and re-zeroes padded frames between its
subsampling convolutions; every pooling counts valid frames only.
"""
import math

import torch
from torch import nn

try:  # torch >= 2.6; before it, the LSTM does not export
    from torch._higher_order_ops.scan import scan
except ImportError:
    scan = None

from mvector.models import BACKBONES
from mvector.models.base import Backbone
from mvector.models.masking import apply_mask, conv_lengths, lengths_to_mask
from mvector.models.pooling import build_pooling


def reverse_within_lengths(x, lengths):
    """``x`` [B, T, C] with each sequence's first ``lengths[b]`` frames reversed in place of
    themselves; padded frames stay where they are (a no-op pattern for them)."""
    frames = x.shape[1]
    steps = torch.arange(frames, device=x.device)[None, :]
    if lengths is None:
        index = (frames - 1 - steps).expand(x.shape[0], frames)
    else:
        valid = steps < lengths[:, None]
        index = torch.where(valid, lengths[:, None] - 1 - steps, steps)
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))


def run_lstm(lstm: nn.LSTM, x):
    """Outputs ``[B, T, H]`` of a batch-first ``lstm`` from zero states: nn.LSTM itself, or while torch.export
    traces, the same recurrence with the same weights as a scan over frames (ONNX Scan)."""
    if not torch.compiler.is_exporting():
        return lstm(x)[0]
    for layer in range(lstm.num_layers):
        weights_hh = getattr(lstm, f"weight_hh_l{layer}")
        gates_in = x @ getattr(lstm, f"weight_ih_l{layer}").t()
        if lstm.bias:
            gates_in = gates_in + getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")

        def step(state, frame_gates, weights_hh=weights_hh):
            hidden, cell = state
            into, forget, candidate, out = (frame_gates + hidden @ weights_hh.t()).chunk(4, dim=-1)  # nn.LSTM's order
            cell = torch.sigmoid(forget) * cell + torch.sigmoid(into) * torch.tanh(candidate)
            hidden = torch.sigmoid(out) * torch.tanh(cell)
            return (hidden, cell), hidden.clone()

        zeros = x.new_zeros(x.shape[0], lstm.hidden_size)
        _, outputs = scan(step, (zeros, zeros.clone()), gates_in.transpose(0, 1))
        x = outputs.transpose(0, 1)
    return x


class BidirectionalLSTMLayer(nn.Module):
    """One bidirectional LSTM layer whose backward half sees each utterance's own frames only."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.forward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.backward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x, lengths):
        ahead = run_lstm(self.forward_lstm, x)
        behind = run_lstm(self.backward_lstm, reverse_within_lengths(x, lengths))
        return torch.cat([ahead, reverse_within_lengths(behind, lengths)], dim=-1)


@BACKBONES.register
class LSTMEncoder(Backbone):
    """Stacked LSTM layers, pooling over valid frames (``TAP``: the mean; ``ASP``/``SAP``:
    attentive), then a projection to ``embd_dim`` (with ReLU, as Resemblyzer's, when
    ``projection_relu``). Resemblyzer-like: ``num_layers=3, hidden_size=256, embd_dim=256``; the
    course project's: ``num_layers=3, hidden_size=64, bidirectional=True``."""

    # Exported as a scan over frames (run_lstm), which needs torch >= 2.6.
    exportable = scan is not None

    def __init__(self, input_size, embd_dim=256, hidden_size=256, num_layers=3, bidirectional=False,
                 pooling_type="TAP", projection_relu=True):
        super().__init__()
        self.embd_dim = embd_dim
        if bidirectional:
            sizes = [input_size] + [2 * hidden_size] * (num_layers - 1)
            self.layers = nn.ModuleList(BidirectionalLSTMLayer(size, hidden_size) for size in sizes)
        else:
            self.layers = nn.ModuleList([nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)])
        self.bidirectional = bidirectional
        channels = hidden_size * (2 if bidirectional else 1)
        self.pooling = build_pooling(pooling_type, channels)
        self.projection = nn.Linear(self.pooling.output_dim, embd_dim)
        self.activation = nn.ReLU() if projection_relu else nn.Identity()

    def forward(self, x, lengths=None):
        if lengths is not None:
            lengths = lengths.to(x.device)
            x = apply_mask(x.transpose(1, 2), lengths_to_mask(lengths, x.shape[1], x.dtype)).transpose(1, 2)
        for layer in self.layers:
            x = layer(x, lengths) if self.bidirectional else run_lstm(layer, x)
        mask = lengths_to_mask(lengths, x.shape[1], x.dtype)
        return self.activation(self.projection(self.pooling(x.transpose(1, 2), mask)))


class SinusoidalPositions(nn.Module):
    """The fixed sine/cosine position code of "Attention is all you need", computed for any length."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("frequencies", torch.exp(torch.arange(0, channels, 2) * (-math.log(10000.0) / channels)),
                             persistent=False)

    def forward(self, x):
        positions = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)[:, None] * self.frequencies[None, :]
        code = torch.stack([positions.sin(), positions.cos()], dim=-1).flatten(1)[:, : x.shape[2]]
        return x + code[None]


# The subsampling convolutions: kernel 3, stride 2, padding 1 (each halves the frame rate).
_SUBSAMPLE = dict(kernel_size=3, stride=2, padding=1)


@BACKBONES.register
class TransformerEncoder(Backbone):
    """Two stride-2 convolutions (a quarter of the frame rate), sinusoidal positions, ``num_layers``
    Transformer encoder layers (``d_model``, ``num_heads``) with padded keys masked, pooling over
    valid frames and a linear projection. The course project's: ``d_model=32, num_layers=2,
    num_heads=8``."""

    def __init__(self, input_size, embd_dim=192, d_model=32, num_layers=2, num_heads=8, feedforward=None,
                 dropout=0.1, pooling_type="TAP"):
        super().__init__()
        self.embd_dim = embd_dim
        self.subsample = nn.ModuleList([nn.Conv1d(input_size, d_model, **_SUBSAMPLE),
                                        nn.Conv1d(d_model, d_model, **_SUBSAMPLE)])
        self.positions = SinusoidalPositions(d_model)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward=feedforward or 4 * d_model,
                                           dropout=dropout, batch_first=True, norm_first=True)
        # No nested tensors: their fast path changes results with the padding and does not export.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.pooling = build_pooling(pooling_type, d_model)
        self.projection = nn.Linear(self.pooling.output_dim, embd_dim)

    def forward(self, x, lengths=None):
        x = x.transpose(1, 2)
        if lengths is not None:
            lengths = lengths.to(x.device)
        for conv in self.subsample:
            x = apply_mask(x, lengths_to_mask(lengths, x.shape[-1], x.dtype))
            x = torch.relu(conv(x))
            lengths = conv_lengths(lengths, **_SUBSAMPLE)
        mask = lengths_to_mask(lengths, x.shape[-1], x.dtype)
        x = self.positions(apply_mask(x, mask).transpose(1, 2))
        padding = None if mask is None else mask[:, 0] == 0
        x = self.norm(self.encoder(x, src_key_padding_mask=padding))
        return self.projection(self.pooling(x.transpose(1, 2), mask))
