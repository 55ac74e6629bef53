"""Batched acoustic front-ends: Kaldi Fbank and librosa-style STFT features in plain torch, and
self-supervised models through transformers (``HFModel``, mvector.features.ssl).

Every featurizer maps ``(waveforms[B, N] float in [-1, 1], lengths[B])`` to
``(features[B, T, D] float32, frame_lengths[B] long)``. Rows are padded utterances; the
features of an utterance do not depend on what its padding holds or on the batch's padded
length, and padded output frames are 0. The same code runs on any device: constant tensors
are non-persistent buffers (they move with ``.to()`` but stay out of checkpoints) and
``forward`` uses torch only, always in float32 (log-mel in bf16/fp16 loses too much).
"""
from collections.abc import Mapping

from torch import nn

from mvector.errors import ConfigError
from mvector.features.base import FEATURIZERS, KALDI_WINDOWS, PAD_MODES, STFT_WINDOWS, normalize_over_time
from mvector.features.kaldi import Fbank
from mvector.features.ssl import HFModel
from mvector.features.stft import MFCC, MelSpectrogram, Spectrogram

__all__ = ["AudioFeaturizer", "FEATURIZERS", "KALDI_WINDOWS", "PAD_MODES", "STFT_WINDOWS", "Fbank", "HFModel",
           "MFCC", "MelSpectrogram", "Spectrogram"]


class AudioFeaturizer(nn.Module):
    """The configured featurizer (``FEATURIZERS[feature_method](**method_args)``) plus optional
    per-utterance mean normalisation over valid frames only (padded frames stay 0)."""

    def __init__(self, feature_method='Fbank', method_args=None, mean_norm=True):
        super().__init__()
        method_args = {} if method_args is None else method_args
        if not isinstance(method_args, Mapping):
            raise ConfigError(f"AudioFeaturizer: 'method_args' must be a mapping of argument names, "
                              f"got {type(method_args).__name__}")
        self.feature_method = feature_method
        self.featurizer = FEATURIZERS.build(feature_method, where='AudioFeaturizer: ', **method_args)
        self.mean_norm = bool(mean_norm)

    @property
    def feature_dim(self) -> int:
        return self.featurizer.feature_dim

    @property
    def sample_rate(self) -> int:
        return self.featurizer.sample_rate

    def num_frames(self, num_samples: int) -> int:
        return self.featurizer.num_frames(num_samples)

    def pinned_args(self) -> dict:
        return self.featurizer.pinned_args()

    def forward(self, waveforms, lengths=None):
        features, frame_lengths = self.featurizer(waveforms, lengths)
        if self.mean_norm:
            features = normalize_over_time(features, frame_lengths)
        return features, frame_lengths
