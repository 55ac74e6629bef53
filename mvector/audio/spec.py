"""One description of how a recording is prepared for a model, read from its config once: the same
for training, evaluation and the predictor, so no two places can read it differently."""
import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class AudioSpec:
    """``sample_rate``: the model's (its featurizer's, which a valid config makes equal to
    ``dataset_conf.sample_rate``); ``target_db``: loudness normalisation target, None when off;
    ``vad``: trim leading and trailing silence; ``window_seconds`` / ``hop_seconds``: recordings
    longer than a window are embedded as the mean of windows this long, one every hop."""

    sample_rate: int
    target_db: float | None
    vad: bool
    window_seconds: float
    hop_seconds: float

    @classmethod
    def from_config(cls, config: dict) -> "AudioSpec":
        """From a validated config (``mvector.config``)."""
        return cls.from_dataset_conf(config["dataset_conf"])

    @classmethod
    def from_dataset_conf(cls, data: dict) -> "AudioSpec":
        return cls(sample_rate=int(data["sample_rate"]),
                   target_db=float(data["target_db"]) if data["use_db_normalization"] else None,
                   vad=bool(data["do_vad"]), window_seconds=float(data["embed_window"]),
                   hop_seconds=float(data["embed_hop"]))

    def with_windows(self, window_seconds=None, hop_seconds=None) -> "AudioSpec":
        """Other windows: a window alone hops by half of it; neither keeps the config's."""
        window = self.window_seconds if window_seconds is None else window_seconds
        if hop_seconds is not None:
            hop = hop_seconds
        else:
            hop = self.hop_seconds if window_seconds is None else window / 2
        return dataclasses.replace(self, window_seconds=window, hop_seconds=hop)

    @property
    def load_options(self) -> dict:
        """``load_audio``'s keyword arguments for this preparation."""
        return {"target_sample_rate": self.sample_rate, "normalize_db": self.target_db, "vad": self.vad}

    def samples(self, seconds: float) -> int:
        return int(round(seconds * self.sample_rate))
