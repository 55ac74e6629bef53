"""Training augmentation: on waveforms (speed, reverberation, noise, volume) and on features (SpecAugment).

Every waveform augmentation draws from the ``numpy.random.Generator`` it is given, so a sample's
augmentation is a function of the dataset's (seed, epoch, item) whichever worker makes it.
Without user noise or RIR files the augmentor generates its own: coloured noise shaped in the
frequency domain, babble mixed from other training utterances, and a bank of room impulse
responses simulated once with pyroomacoustics and cached on disk.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.signal import fftconvolve
from torch import nn

from mvector.audio import load_audio, resample
from mvector.config import NUM, OPT_STR, Field, validate
from mvector.data_lists import AUDIO_EXTENSIONS
from mvector.errors import ConfigError
from mvector.registry import Registry

AUG_SCHEMA = {
    "speed": {
        "prob": Field(NUM, 0.5),
        # Factors other than 1.0; with speed_perturb_as_classes factor i is its own speaker set i+1.
        "speeds": Field((list,), [0.9, 1.1]),
    },
    "volume": {
        "prob": Field(NUM, 0.2),
        "min_gain_db": Field(NUM, -10.0),
        "max_gain_db": Field(NUM, 10.0),
    },
    "noise": {
        "prob": Field(NUM, 0.5),
        "noise_dir": Field(OPT_STR, None),
        "min_snr_db": Field(NUM, 5.0),
        "max_snr_db": Field(NUM, 20.0),
        # Used when noise_dir is null: names in GENERATED_NOISES.
        "generated": Field((list,), ["white", "pink", "brown", "babble"]),
        "min_babble_speakers": Field((int,), 3),
        "max_babble_speakers": Field((int,), 7),
    },
    "reverb": {
        "prob": Field(NUM, 0.3),
        "rir_dir": Field(OPT_STR, None),
        # Size of the simulated bank used when rir_dir is null.
        "num_simulated_rirs": Field((int,), 200),
    },
    "spec_aug": {
        "prob": Field(NUM, 0.5),
        "freq_mask_width": Field((list,), [0, 8]),
        "time_mask_width": Field((list,), [0, 10]),
        "num_freq_masks": Field((int,), 1),
        "num_time_masks": Field((int,), 1),
    },
}

DEFAULT_SPEEDS = tuple(AUG_SCHEMA["speed"]["speeds"].default)
RIR_CACHE_ENV = "MVECTOR_CACHE"
# Simulated rooms: shoebox sizes (m) and reverberation times (s) of ordinary rooms. Image-source
# order is capped so one RIR costs well under a second; the late tail it cuts is weak anyway.
ROOM_MIN, ROOM_MAX = (3.0, 3.0, 2.5), (10.0, 8.0, 4.0)
RT60_RANGE = (0.2, 0.8)
MAX_IMAGE_ORDER = 30
# An RIR is cut where its remaining energy falls 60 dB below the total, and at 1 s at most.
RIR_TAIL_DB = 60.0
RIR_MAX_SECONDS = 1.0


def load_augmentation_config(path) -> dict:
    """Read and validate ``augmentation.yml``: unknown keys and wrong types are ConfigErrors."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"augmentation config not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read augmentation config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return validate_augmentation_config(data, where=str(path))


def validate_augmentation_config(data: dict, where: str = "<augmentation config>") -> dict:
    """``data`` completed with defaults, after checking keys, types and value ranges."""
    conf = validate(data, AUG_SCHEMA, where=where)
    _check_values(conf, where)
    return conf


def _check_values(conf: dict, where: str) -> None:
    for section, values in conf.items():
        if not 0.0 <= values["prob"] <= 1.0:
            raise ConfigError(f"{where}: '{section}.prob' must be in [0, 1], got {values['prob']!r}")
    speeds = conf["speed"]["speeds"]
    if not all(isinstance(s, (int, float)) and s > 0 and s != 1.0 for s in speeds):
        raise ConfigError(f"{where}: 'speed.speeds' must be positive factors other than 1.0, got {speeds!r}")
    _check_order(where, "volume", conf["volume"], "min_gain_db", "max_gain_db")
    noise = conf["noise"]
    _check_order(where, "noise", noise, "min_snr_db", "max_snr_db")
    _check_order(where, "noise", noise, "min_babble_speakers", "max_babble_speakers")
    if noise["min_babble_speakers"] < 1:
        raise ConfigError(f"{where}: 'noise.min_babble_speakers' must be >= 1")
    unknown = [n for n in noise["generated"] if n not in GENERATED_NOISES]
    if unknown or (noise["noise_dir"] is None and not noise["generated"] and noise["prob"] > 0):
        raise ConfigError(f"{where}: 'noise.generated' must list some of {', '.join(GENERATED_NOISES)}, "
                          f"got {noise['generated']!r}")
    if conf["reverb"]["num_simulated_rirs"] < 1:
        raise ConfigError(f"{where}: 'reverb.num_simulated_rirs' must be >= 1")
    spec = conf["spec_aug"]
    for key in ("freq_mask_width", "time_mask_width"):
        width = spec[key]
        if not (len(width) == 2 and all(isinstance(w, int) and w >= 0 for w in width) and width[0] <= width[1]):
            raise ConfigError(f"{where}: 'spec_aug.{key}' must be [min, max] frame counts, 0 <= min <= max, "
                              f"got {width!r}")
    for key in ("num_freq_masks", "num_time_masks"):
        if spec[key] < 0:
            raise ConfigError(f"{where}: 'spec_aug.{key}' must be >= 0")


def _check_order(where, section, values, low, high):
    if values[low] > values[high]:
        raise ConfigError(f"{where}: '{section}.{low}' ({values[low]}) is above '{section}.{high}' ({values[high]})")


# ------------------------------------------------------------------ elementary operations

def change_speed(wav: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play ``wav`` ``factor`` times faster (pitch moves too, as in Kaldi's speed perturbation):
    read it as if sampled at ``factor * sample_rate`` and resample back. Length becomes len/factor."""
    return resample(wav, round(sample_rate * factor), sample_rate)


def apply_gain(wav: np.ndarray, gain_db: float) -> np.ndarray:
    return np.multiply(wav, np.float32(10.0 ** (gain_db / 20.0)), dtype=np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + k * noise`` with ``k`` such that 10 log10(P_speech / P_k*noise) = ``snr_db``.
    ``noise`` must be as long as ``speech``; silent speech or noise comes back unchanged."""
    speech_power = float(np.mean(np.square(speech, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if speech_power == 0.0 or noise_power == 0.0:
        return speech
    scale = math.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (speech + np.float32(scale) * noise).astype(np.float32)


def fit_length(wav: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A ``length``-sample stretch of ``wav``: looped when shorter, from a random offset when longer."""
    if len(wav) < length:
        wav = np.tile(wav, -(-length // len(wav)))
    start = int(rng.integers(0, len(wav) - length + 1))
    return wav[start:start + length]


def reverberate(wav: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir`` keeping the direct path (its largest tap) on the original timing and
    the RMS level unchanged, so labels, crops and dB normalisation still line up."""
    direct = int(np.argmax(np.abs(rir)))
    wet = fftconvolve(wav, rir)[direct:direct + len(wav)]
    wet_rms = math.sqrt(float(np.mean(np.square(wet, dtype=np.float64))))
    dry_rms = math.sqrt(float(np.mean(np.square(wav, dtype=np.float64))))
    if wet_rms == 0.0:
        return wav
    return (wet * (dry_rms / wet_rms)).astype(np.float32)


def coloured_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1/f**exponent (0 white, 1 pink, 2 brown),
    shaped by scaling the spectrum of white noise; unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length)
    freqs[0] = freqs[1] if length > 1 else 1.0  # no infinite DC gain
    spectrum *= freqs ** (-exponent / 2.0)
    noise = np.fft.irfft(spectrum, n=length)
    rms = math.sqrt(float(np.mean(noise ** 2))) or 1.0
    return (noise / rms).astype(np.float32)


# ------------------------------------------------------------------ generated noises

GENERATED_NOISES = Registry("generated noise")


class _ColouredNoise:
    exponent = 0.0

    def __call__(self, length, rng, babble_source, conf):
        return coloured_noise(length, self.exponent, rng)


@GENERATED_NOISES.register(name="white")
class WhiteNoise(_ColouredNoise):
    exponent = 0.0


@GENERATED_NOISES.register(name="pink")
class PinkNoise(_ColouredNoise):
    exponent = 1.0


@GENERATED_NOISES.register(name="brown")
class BrownNoise(_ColouredNoise):
    exponent = 2.0


@GENERATED_NOISES.register(name="babble")
class BabbleNoise:
    """The sum of a few other training utterances, each at the same level: crowd chatter."""

    def __call__(self, length, rng, babble_source, conf):
        count = int(rng.integers(conf["min_babble_speakers"], conf["max_babble_speakers"] + 1))
        talkers = [fit_length(w, length, rng) for w in babble_source(count, rng) if len(w)]
        babble = np.zeros(length, dtype=np.float32)
        for talker in talkers:
            rms = math.sqrt(float(np.mean(np.square(talker, dtype=np.float64))))
            if rms > 0:
                babble += talker / np.float32(rms)
        return babble


# ------------------------------------------------------------------ simulated room impulse responses

def default_cache_dir() -> Path:
    return Path(os.environ.get(RIR_CACHE_ENV) or Path.home() / ".cache" / "mvector")


def simulate_rir(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One RIR of a random shoebox room (size, RT60, source and microphone positions from ``rng``)."""
    import pyroomacoustics as pra  # imported here: slow, and only needed to fill the cache once

    dims = rng.uniform(ROOM_MIN, ROOM_MAX)
    rt60 = rng.uniform(*RT60_RANGE)
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption),
                       max_order=min(max_order, MAX_IMAGE_ORDER))
    # Half a metre from the walls, like a talker and a device in a real room.
    room.add_source(rng.uniform(0.5, dims - 0.5))
    room.add_microphone(rng.uniform(0.5, dims - 0.5))
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    return _trim_tail(rir, sample_rate).astype(np.float32)


def _trim_tail(rir: np.ndarray, sample_rate: int) -> np.ndarray:
    remaining = np.cumsum((rir ** 2)[::-1])[::-1]
    audible = np.flatnonzero(remaining > remaining[0] * 10.0 ** (-RIR_TAIL_DB / 10.0))
    end = int(audible[-1]) + 1 if len(audible) else len(rir)
    return rir[:min(end, int(RIR_MAX_SECONDS * sample_rate))]


def simulate_rir_bank(sample_rate: int, count: int, seed: int = 0) -> list:
    """``count`` RIRs; RIR i depends only on (seed, i), so banks of any size agree on their prefix."""
    return [simulate_rir(sample_rate, np.random.default_rng([seed, i])) for i in range(count)]


def load_rir_bank(sample_rate: int, count: int = 200, cache_dir=None, seed: int = 0) -> list:
    """The simulated bank from ``cache_dir`` (default ``$MVECTOR_CACHE`` or ~/.cache/mvector),
    simulating and saving it first when absent or unreadable. Written through a per-process
    temporary file and an atomic rename, so DDP ranks filling the cache at once do not clash."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"rir_bank_{sample_rate}_{count}_seed{seed}.npz"
    try:
        with np.load(path) as stored:
            return np.split(stored["samples"], np.cumsum(stored["lengths"])[:-1])
    except (OSError, KeyError, ValueError):
        pass
    rirs = simulate_rir_bank(sample_rate, count, seed)
    directory.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(temporary, samples=np.concatenate(rirs), lengths=np.array([len(r) for r in rirs]))
    os.replace(temporary, path)
    return rirs


# ------------------------------------------------------------------ the waveform augmentor

@functools.lru_cache(maxsize=64)
def _load_clip(path: str, sample_rate: int) -> np.ndarray:
    """Noise and RIR files are reused many times: decode each once per process (bounded)."""
    return load_audio(path, target_sample_rate=sample_rate)


def _audio_files_under(folder, key: str, where: str) -> list:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{where}: '{key}' {folder!r} is not a directory")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ConfigError(f"{where}: '{key}' {folder!r} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files


class WaveAugmentor:
    """Speed -> reverberation -> noise -> volume, each applied with its own probability.

    ``augmentor(wav, label, rng, num_base_speakers=None, babble_source=None) -> (wav, label)``.
    ``num_base_speakers`` given: a speed factor k (1-based in ``speed.speeds``) maps the label to
    ``label + k * num_base_speakers`` (speed-perturbed voices as new speakers).
    ``babble_source(count, rng)`` returns ``count`` other training waveforms; without it
    generated noise never picks babble.
    """

    def __init__(self, conf: dict, sample_rate: int = 16000, where: str = "<augmentation config>",
                 rir_cache_dir=None):
        self.conf = conf
        self.sample_rate = sample_rate
        self.speeds = [float(s) for s in conf["speed"]["speeds"]]
        noise, reverb = conf["noise"], conf["reverb"]
        self.noise_files = (_audio_files_under(noise["noise_dir"], "noise.noise_dir", where)
                            if noise["noise_dir"] and noise["prob"] > 0 else [])
        self.generated_noises = {name: GENERATED_NOISES[name]() for name in noise["generated"]}
        self.rir_files = (_audio_files_under(reverb["rir_dir"], "reverb.rir_dir", where)
                          if reverb["rir_dir"] and reverb["prob"] > 0 else [])
        # Simulated now, in the main process, so data-loader workers inherit the bank.
        self.rir_bank = (load_rir_bank(sample_rate, reverb["num_simulated_rirs"], rir_cache_dir)
                         if not reverb["rir_dir"] and reverb["prob"] > 0 else [])

    @classmethod
    def from_file(cls, path, sample_rate: int = 16000, rir_cache_dir=None) -> "WaveAugmentor":
        return cls(load_augmentation_config(path), sample_rate, where=str(path), rir_cache_dir=rir_cache_dir)

    @property
    def num_speed_classes(self) -> int:
        """Label sets with speed_perturb_as_classes: the original voices plus one per factor."""
        return 1 + len(self.speeds)

    def __call__(self, wav, label, rng=None, *, num_base_speakers=None, babble_source=None):
        rng = rng if rng is not None else np.random.default_rng()
        conf = self.conf
        if self.speeds and rng.random() < conf["speed"]["prob"]:
            k = int(rng.integers(len(self.speeds)))
            wav = change_speed(wav, self.speeds[k], self.sample_rate)
            if num_base_speakers is not None:
                label = label + (k + 1) * num_base_speakers
        if rng.random() < conf["reverb"]["prob"]:
            wav = reverberate(wav, self._pick_rir(rng))
        if rng.random() < conf["noise"]["prob"]:
            noise = self._make_noise(len(wav), rng, babble_source)
            if noise is not None:
                snr = rng.uniform(conf["noise"]["min_snr_db"], conf["noise"]["max_snr_db"])
                wav = mix_at_snr(wav, noise, snr)
        if rng.random() < conf["volume"]["prob"]:
            wav = apply_gain(wav, rng.uniform(conf["volume"]["min_gain_db"], conf["volume"]["max_gain_db"]))
        return np.ascontiguousarray(wav, dtype=np.float32), label

    def _pick_rir(self, rng) -> np.ndarray:
        if self.rir_files:
            return _load_clip(self.rir_files[int(rng.integers(len(self.rir_files)))], self.sample_rate)
        return self.rir_bank[int(rng.integers(len(self.rir_bank)))]

    def _make_noise(self, length, rng, babble_source):
        if self.noise_files:
            clip = _load_clip(self.noise_files[int(rng.integers(len(self.noise_files)))], self.sample_rate)
            return fit_length(clip, length, rng)
        names = [n for n in self.generated_noises if n != "babble" or babble_source is not None]
        if not names:
            return None
        name = names[int(rng.integers(len(names)))]
        return self.generated_noises[name](length, rng, babble_source, self.conf["noise"])


def build_wave_augmentor(aug_conf_path, sample_rate: int = 16000, rir_cache_dir=None):
    """The augmentor of ``aug_conf_path``; None when the path is null (no waveform augmentation)."""
    if aug_conf_path is None:
        return None
    return WaveAugmentor.from_file(aug_conf_path, sample_rate, rir_cache_dir=rir_cache_dir)


# ------------------------------------------------------------------ SpecAugment

class SpecAugment(nn.Module):
    """Masks random frequency bands and time spans of features ``[B, T, D]`` on their own device.

    Each utterance is masked with probability ``prob``; time masks fall inside its valid frames
    (``frame_lengths``), so padding never absorbs a mask. Masked values become the utterance's
    mean over its valid frames (0 for mean-normalised features). Identity in eval mode.
    """

    def __init__(self, freq_mask_width=(0, 8), time_mask_width=(0, 10), num_freq_masks=1, num_time_masks=1,
                 prob=0.5):
        super().__init__()
        for name, width in (("freq_mask_width", freq_mask_width), ("time_mask_width", time_mask_width)):
            if len(width) != 2 or not 0 <= width[0] <= width[1]:
                raise ConfigError(f"SpecAugment: {name} must be (min, max) with 0 <= min <= max, got {width!r}")
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"SpecAugment: prob must be in [0, 1], got {prob!r}")
        self.freq_mask_width = tuple(int(w) for w in freq_mask_width)
        self.time_mask_width = tuple(int(w) for w in time_mask_width)
        self.num_freq_masks = int(num_freq_masks)
        self.num_time_masks = int(num_time_masks)
        self.prob = float(prob)

    @classmethod
    def from_config(cls, source):
        """From an augmentation.yml path or its validated dict; None when ``source`` is None."""
        if source is None:
            return None
        conf = source if isinstance(source, dict) else load_augmentation_config(source)
        spec = conf["spec_aug"]
        return cls(spec["freq_mask_width"], spec["time_mask_width"], spec["num_freq_masks"],
                   spec["num_time_masks"], spec["prob"])

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor = None) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return features
        batch, frames, dims = features.shape
        device = features.device
        if frame_lengths is None:
            frame_lengths = torch.full((batch,), frames, device=device, dtype=torch.long)
        frame_lengths = frame_lengths.to(device=device, dtype=torch.long)
        time_mask = self._spans(batch, frames, frame_lengths, self.time_mask_width, self.num_time_masks, device)
        all_dims = torch.full((batch,), dims, device=device, dtype=torch.long)
        freq_mask = self._spans(batch, dims, all_dims, self.freq_mask_width, self.num_freq_masks, device)
        chosen = torch.rand(batch, device=device) < self.prob
        valid = torch.arange(frames, device=device)[None, :] < frame_lengths[:, None]
        mask = (time_mask[:, :, None] | freq_mask[:, None, :]) & (chosen[:, None] & valid)[:, :, None]
        weights = valid.to(features.dtype)[:, :, None]
        mean = (features * weights).sum(dim=(1, 2)) / (weights.sum(dim=(1, 2)) * dims).clamp(min=1)
        return torch.where(mask, mean[:, None, None].to(features.dtype), features)

    @staticmethod
    def _spans(batch, size, limits, width_range, count, device):
        """``count`` random spans per row, each of a width in ``width_range`` inside [0, limit)."""
        positions = torch.arange(size, device=device)[None, :]
        mask = torch.zeros(batch, size, dtype=torch.bool, device=device)
        for _ in range(count):
            width = torch.randint(width_range[0], width_range[1] + 1, (batch,), device=device)
            width = torch.minimum(width, limits)
            start = (torch.rand(batch, device=device) * (limits - width + 1)).long()
            mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
        return mask
