"""x-vector style TDNN (Snyder et al., 2018) with the reference toolkit's layout.

The frame layers are unpadded ('valid') convolutions, so every output frame inside an utterance's
shortened length is computed from that utterance's own frames only: no masking is needed between
layers, just the lengths carried through and the mask handed to the pooling.
"""
from torch import nn

from mvector.errors import AudioError
from mvector.models import BACKBONES
from mvector.models.masking import apply_mask, lengths_to_mask
from mvector.models.pooling import build_pooling
from mvector.models.base import Backbone

# (kernel_size, dilation) of the five frame layers: a context of 15 frames in all.
FRAME_LAYERS = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))


@BACKBONES.register
class TDNN(Backbone):
    """Five dilated frame layers (conv -> ReLU -> BatchNorm, the last without BatchNorm), pooling,
    then BatchNorm -> Linear -> BatchNorm down to the embedding.

    ``forward(features[B, T, input_size], lengths[B] or None) -> [B, embd_dim]``; T must be at
    least ``min_frames`` (15).
    """

    def __init__(self, input_size, embd_dim=192, pooling_type="ASP", channels=512):
        super().__init__()
        self.embd_dim = embd_dim
        layers = []
        in_channels = input_size
        for kernel, dilation in FRAME_LAYERS:
            layers += [nn.Conv1d(in_channels, channels, kernel, dilation=dilation), nn.ReLU(),
                       nn.BatchNorm1d(channels)]
            in_channels = channels
        self.frames = nn.Sequential(*layers[:-1])  # the last frame layer feeds the pooling un-normalised
        self.min_frames = 1 + sum(dilation * (kernel - 1) for kernel, dilation in FRAME_LAYERS)
        self.pooling = build_pooling(pooling_type, channels)
        self.pooled_bn = nn.BatchNorm1d(self.pooling.output_dim)
        self.linear = nn.Linear(self.pooling.output_dim, embd_dim)
        self.embd_bn = nn.BatchNorm1d(embd_dim)

    def forward(self, x, lengths=None):
        if x.shape[1] < self.min_frames:
            raise AudioError(f"TDNN needs at least {self.min_frames} feature frames, got {x.shape[1]}")
        x = x.transpose(1, 2)
        if lengths is not None:
            lengths = lengths.to(x.device)
            # Padded outputs are ignored by the pooling, yet garbage large enough to overflow there
            # would turn into NaN when multiplied by a zero mask; zeroed inputs keep them finite.
            x = apply_mask(x, lengths_to_mask(lengths, x.shape[-1]))
        x = self.frames(x)
        mask = None if lengths is None else lengths_to_mask(lengths - (self.min_frames - 1), x.shape[-1])
        x = self.pooled_bn(self.pooling(x, mask))
        return self.embd_bn(self.linear(x))
