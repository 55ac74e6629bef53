"""Training augmentation: on waveforms (speed, reverberation, noise, volume) and on features (SpecAugment).

Speed perturbation changes an utterance's length and label, so it runs per utterance in the data
loader (``SpeedPerturb``, drawing from the dataset's per-sample generator). Everything else runs
batched on the training device, after the batch is there (``WaveAugment``, ``SpecAugment``), so
that a GPU is never held up by augmentation on the loader's CPU cores. Without user noise or RIR
files the augmentation makes its own: coloured noise shaped in the frequency domain, babble mixed
from other utterances of the batch, and a bank of room impulse responses simulated once with
pyroomacoustics and cached on disk.
"""
from typing import NamedTuple

from mvector.training.augment.schema import DEFAULT_SPEEDS, load_augmentation_config, validate_augmentation_config
from mvector.training.augment.spec import SpecAugment
from mvector.training.augment.speed import SpeedPerturb
from mvector.training.augment.wave import DEVICE_SECTIONS, WaveAugment

__all__ = ["Augmentation", "build_augmentation", "DEFAULT_SPEEDS", "load_augmentation_config",
           "validate_augmentation_config", "SpecAugment", "SpeedPerturb", "WaveAugment"]


class Augmentation(NamedTuple):
    """An augmentation file's three parts: ``speed`` for the data loader, ``wave`` and ``spec`` for
    the training device (each None when off)."""
    speed: SpeedPerturb | None
    wave: WaveAugment | None
    spec: SpecAugment | None


def build_augmentation(aug_conf_path, sample_rate: int = 16000, rir_cache_dir=None) -> Augmentation:
    """The parts of an augmentation file, read and validated once; a null path turns them all off.
    ``wave`` is None when reverberation, noise and volume are all off."""
    if aug_conf_path is None:
        return Augmentation(None, None, None)
    conf = load_augmentation_config(aug_conf_path)
    wave = (WaveAugment(conf, sample_rate, where=str(aug_conf_path), rir_cache_dir=rir_cache_dir)
            if any(conf[section]["prob"] > 0 for section in DEVICE_SECTIONS) else None)
    return Augmentation(SpeedPerturb(conf, sample_rate), wave, SpecAugment.from_config(conf))
