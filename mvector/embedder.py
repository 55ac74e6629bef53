"""The inference graph: waveform -> features -> backbone -> embedding, built from a config."""
import torch
from torch import nn

from mvector.features import AudioFeaturizer
from mvector.models import build_backbone


class SpeakerEmbedder(nn.Module):
    """Featurizer and backbone in one module, so no caller can pair weights with another front-end."""

    def __init__(self, featurizer: AudioFeaturizer, backbone: nn.Module):
        super().__init__()
        self.featurizer = featurizer
        self.backbone = backbone

    @property
    def sample_rate(self) -> int:
        return self.featurizer.sample_rate

    @property
    def embd_dim(self) -> int:
        return self.backbone.embd_dim

    def utterances_per_pass(self, num_samples: int, device) -> int:
        """How many utterances of ``num_samples`` to embed per forward pass on ``device``. Some
        backbones (``cpu_batch_frames``: the 2-D ResNets) run slower per utterance on the CPU once a
        pass's feature maps outgrow the caches, and their memory grows to gigabytes, so their batches
        are split there; on a GPU a batch is one pass."""
        budget = self.backbone.cpu_batch_frames
        if budget is None or torch.device(device).type != "cpu":
            return 1 << 30
        return max(1, budget // max(1, self.featurizer.num_frames(num_samples)))

    def min_samples(self) -> int:
        """The fewest samples embedded on their own: those that give the backbone its ``min_frames``.

        In a padded batch a model may return a (meaningless) embedding for an utterance shorter than
        its receptive field, so evaluation refuses such utterances up front and export sizes its
        graph's smallest input by this.
        """
        frames = max(1, self.backbone.min_frames)
        low, high = 1, self.sample_rate
        while self.featurizer.num_frames(high) < frames:
            high *= 2
        while low < high:  # frame counts grow with the sample count: bisect for the first that suffices
            middle = (low + high) // 2
            low, high = (middle + 1, high) if self.featurizer.num_frames(middle) < frames else (low, middle)
        return low

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor = None) -> torch.Tensor:
        """``waveforms[B, N]`` in [-1, 1] and sample ``lengths[B]`` -> raw embeddings ``[B, E]``."""
        features, frame_lengths = self.featurizer(waveforms, lengths)
        return self.backbone(features, frame_lengths if lengths is not None else None)


def window_starts(num_samples: int, window: int, hop: int) -> list:
    """First samples of the windows a recording of ``num_samples`` is embedded as: one window when it
    fits, else one every ``hop`` and a last one flush with the end, so no audio is left out."""
    if num_samples <= window:
        return [0]
    starts = list(range(0, num_samples - window + 1, hop))
    if starts[-1] + window < num_samples:
        starts.append(num_samples - window)
    return starts


def build_featurizer(config: dict) -> AudioFeaturizer:
    pre = config["preprocess_conf"]
    return AudioFeaturizer(pre["feature_method"], pre["method_args"], mean_norm=pre["mean_norm"])


def build_embedder(config: dict) -> SpeakerEmbedder:
    featurizer = build_featurizer(config)
    model = config["model_conf"]
    args = dict(model["model_args"])
    backbone = build_backbone(model["model"], featurizer.feature_dim, **args)
    return SpeakerEmbedder(featurizer, backbone)
