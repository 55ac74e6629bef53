"""Speed perturbation, per utterance in the data loader (it changes length and, optionally, label)."""
import numpy as np

from mvector.audio import resample


def change_speed(wav: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play ``wav`` ``factor`` times faster (pitch moves too, as in Kaldi's speed perturbation):
    read it as if sampled at ``factor * sample_rate`` and resample back. Length becomes len/factor."""
    return resample(wav, round(sample_rate * factor), sample_rate)


class SpeedPerturb:
    """Speed perturbation of one utterance, in the data loader (it changes the length and, with
    ``speed_perturb_as_classes``, the label, so it must run before batching).

    ``speed_perturb(wav, label, rng, num_base_speakers=None) -> (wav, label)``. Applied with
    probability ``speed.prob``, one of ``speed.speeds`` at random. ``num_base_speakers`` given: factor
    k (1-based in ``speed.speeds``) maps the label to ``label + k * num_base_speakers``.
    """

    def __init__(self, conf: dict, sample_rate: int = 16000):
        self.prob = float(conf["speed"]["prob"])
        self.speeds = [float(s) for s in conf["speed"]["speeds"]]
        self.sample_rate = sample_rate

    @property
    def num_speed_classes(self) -> int:
        """Label sets with speed_perturb_as_classes: the original voices plus one per factor."""
        return 1 + len(self.speeds)

    def __call__(self, wav, label, rng, num_base_speakers=None):
        if self.speeds and rng.random() < self.prob:
            k = int(rng.integers(len(self.speeds)))
            wav = change_speed(wav, self.speeds[k], self.sample_rate)
            if num_base_speakers is not None:
                label = label + (k + 1) * num_base_speakers
        return wav, label
