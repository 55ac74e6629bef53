"""Training augmentation: on waveforms (speed, reverberation, noise, volume) and on features (SpecAugment).

Speed perturbation changes an utterance's length and label, so it runs per utterance in the data
loader (``SpeedPerturb``, drawing from the dataset's per-sample generator). Everything else runs
batched on the training device, after the batch is there (``WaveAugment``, ``SpecAugment``), so
that a GPU is never held up by augmentation on the loader's CPU cores. Without user noise or RIR
files the augmentation makes its own: coloured noise shaped in the frequency domain, babble mixed
from other utterances of the batch, and a bank of room impulse responses simulated once with
pyroomacoustics and cached on disk.
"""

import logging
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from mvector.audio import AUDIO_EXTENSIONS, load_audio, resample
from mvector.config import NUM, OPT_STR, Field, validate
from mvector.errors import AudioError, ConfigError
from mvector.fileio import atomic_file
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

logger = logging.getLogger(__name__)

DEFAULT_SPEEDS = tuple(AUG_SCHEMA["speed"]["speeds"].default)
# The sections WaveAugment applies on the training device.
DEVICE_SECTIONS = ("reverb", "noise", "volume")
RIR_CACHE_ENV = "MVECTOR_CACHE"
# Simulated rooms: shoebox sizes (m) and reverberation times (s) of ordinary rooms. Image-source
# order is capped so one RIR costs well under a second; the late tail it cuts is weak anyway.
ROOM_MIN, ROOM_MAX = (3.0, 3.0, 2.5), (10.0, 8.0, 4.0)
RT60_RANGE = (0.2, 0.8)
MAX_IMAGE_ORDER = 30
# An RIR is cut where its remaining energy falls 60 dB below the total, and at 1 s at most.
RIR_TAIL_DB = 60.0
RIR_MAX_SECONDS = 1.0
# Noise and RIR folders are decoded into memory once: at most this much audio from each.
MAX_BANK_SECONDS = 3600.0


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


# ------------------------------------------------------------------ speed perturbation (in the loader)

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


# ------------------------------------------------------------------ batched operations on the device
# Every function takes a zero-padded batch ``waveforms[B, N]`` with ``lengths[B]`` valid samples and
# measures levels over the valid samples only; padding stays zero.

def valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def mean_power(waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean square over each row's valid samples (0 for an empty row)."""
    valid = valid_mask(lengths, waveforms.shape[1])
    return (waveforms.float().square() * valid).sum(dim=1) / lengths.clamp(min=1)


def mix_at_snr(speech: torch.Tensor, noise: torch.Tensor, lengths: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``speech + k * noise`` per row, ``k`` such that 10 log10(P_speech / P_k*noise) = ``snr_db[row]``
    over the valid samples. Rows whose speech or noise is silent come back unchanged."""
    speech_power, noise_power = mean_power(speech, lengths), mean_power(noise, lengths)
    usable = (speech_power > 0) & (noise_power > 0)
    scale = torch.sqrt(speech_power / (noise_power.clamp(min=1e-20) * 10.0 ** (snr_db / 10.0)))
    scale = torch.where(usable, scale, torch.zeros_like(scale))
    return speech + (scale[:, None] * noise * valid_mask(lengths, speech.shape[1])).to(speech.dtype)


def reverberate(waveforms: torch.Tensor, lengths: torch.Tensor, rirs: torch.Tensor) -> torch.Tensor:
    """Each row convolved with its room impulse response (``rirs[B, L]``, zero-padded), keeping the
    direct path (the RIR's largest tap) on the original timing and the RMS level unchanged, so labels,
    crops and dB normalisation still line up. A row whose reverberant copy is silent is kept dry."""
    batch, size = waveforms.shape
    fft_size = 1 << (size + rirs.shape[1] - 2).bit_length()  # >= the full convolution's length
    spectrum = torch.fft.rfft(waveforms.float(), fft_size) * torch.fft.rfft(rirs.float(), fft_size)
    full = torch.fft.irfft(spectrum, fft_size)
    direct = rirs.abs().argmax(dim=1)
    wet = full.gather(1, direct[:, None] + torch.arange(size, device=waveforms.device)[None, :])
    wet = wet * valid_mask(lengths, size)
    wet_power, dry_power = mean_power(wet, lengths), mean_power(waveforms, lengths)
    gain = torch.sqrt(dry_power / wet_power.clamp(min=1e-20))
    return torch.where((wet_power > 0)[:, None], wet * gain[:, None], waveforms.float()).to(waveforms.dtype)


def coloured_noise(rows: int, size: int, exponents: torch.Tensor) -> torch.Tensor:
    """``[rows, size]`` Gaussian noise whose power spectrum falls as 1/f**exponent (0 white, 1 pink,
    2 brown), shaped by scaling the spectrum of white noise; unit RMS per row."""
    device = exponents.device
    white = torch.randn(rows, size, device=device)
    freqs = torch.fft.rfftfreq(size, device=device)
    if size > 1:
        freqs[0] = freqs[1]  # no infinite DC gain
    else:
        freqs[0] = 1.0
    shaped = torch.fft.irfft(torch.fft.rfft(white) * freqs[None, :] ** (-exponents[:, None] / 2.0), n=size)
    return shaped / shaped.square().mean(dim=1, keepdim=True).sqrt().clamp(min=1e-20)


def loop_crops(samples: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``[R, size]`` stretches of clips stored end to end in ``samples`` (clip r at ``offsets[r]``,
    ``lengths[r]`` long): from a random start when the clip is longer, looped when it is shorter."""
    spans = torch.where(lengths >= size, lengths - size + 1, lengths)
    starts = (torch.rand(len(lengths), device=lengths.device) * spans).long()
    positions = (starts[:, None] + torch.arange(size, device=lengths.device)[None, :]) % lengths[:, None]
    return samples[offsets[:, None] + positions].float()


class ClipBank:
    """Clips (noise or RIRs) stored end to end in one tensor, moved to a device on demand."""

    def __init__(self, clips: list):
        self.samples = torch.from_numpy(np.concatenate(clips).astype(np.float32)) if clips else torch.zeros(0)
        self.lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device) -> "ClipBank":
        if self.samples.device != torch.device(device):
            self.samples, self.lengths, self.offsets = (t.to(device) for t in (self.samples, self.lengths, self.offsets))
        return self

    def padded(self, picks: torch.Tensor) -> torch.Tensor:
        """``[R, longest]`` the picked clips from their first sample, zero-padded."""
        lengths = self.lengths[picks]
        longest = int(lengths.max())
        positions = torch.arange(longest, device=picks.device)[None, :]
        inside = positions < lengths[:, None]
        index = torch.where(inside, self.offsets[picks][:, None] + positions, torch.zeros_like(positions))
        return self.samples[index] * inside

    def crops(self, picks: torch.Tensor, size: int) -> torch.Tensor:
        return loop_crops(self.samples, self.offsets[picks], self.lengths[picks], size)


# ------------------------------------------------------------------ generated noises

GENERATED_NOISES = Registry("generated noise")


class _ColouredNoise:
    exponent = 0.0
    needs_other_rows = False

    def __call__(self, waveforms, lengths, rows, conf):
        exponents = torch.full((len(rows),), self.exponent, device=waveforms.device)
        return coloured_noise(len(rows), waveforms.shape[1], exponents)


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
    """Crowd chatter: the sum of a few other utterances of the same batch, each at unit RMS,
    looped to fill the row. Needs a batch of at least two."""

    needs_other_rows = True

    def __call__(self, waveforms, lengths, rows, conf):
        batch, size = waveforms.shape
        device = waveforms.device
        low, high = conf["min_babble_speakers"], conf["max_babble_speakers"]
        counts = torch.randint(low, high + 1, (len(rows),), device=device)
        rms = mean_power(waveforms, lengths).sqrt()
        flat = waveforms.float().reshape(-1)
        babble = torch.zeros(len(rows), size, device=device)
        for talker in range(high):
            # Another row: a random non-zero shift of this one's position in the batch.
            others = (rows + torch.randint(1, batch, (len(rows),), device=device)) % batch
            usable = (talker < counts) & (rms[others] > 0) & (lengths[others] > 0)
            voice = loop_crops(flat, others * size, lengths[others].clamp(min=1), size)
            babble += voice * (usable / rms[others].clamp(min=1e-20))[:, None]
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
    temporary file and an atomic rename (``fileio.atomic_file``), so DDP ranks filling the cache at
    once do not clash."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"rir_bank_{sample_rate}_{count}_seed{seed}.npz"
    try:
        with np.load(path) as stored:
            return np.split(stored["samples"], np.cumsum(stored["lengths"])[:-1])
    except (OSError, KeyError, ValueError):
        pass
    rirs = simulate_rir_bank(sample_rate, count, seed)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as fh:
        np.savez(fh, samples=np.concatenate(rirs), lengths=np.array([len(r) for r in rirs]))
    return rirs


# ------------------------------------------------------------------ the batched waveform augmentation

def _audio_files_under(folder, key: str, where: str) -> list:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{where}: '{key}' {folder!r} is not a directory")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ConfigError(f"{where}: '{key}' {folder!r} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files


def load_clip_folder(folder, key: str, where: str, sample_rate: int) -> list:
    """The audio files under ``folder`` (noise or RIRs), decoded once at ``sample_rate``.

    A folder of more than ``MAX_BANK_SECONDS`` of audio gives a random subset of that much (the
    same subset every run). Unreadable or silent files are skipped with a warning; a folder with
    none usable is a ConfigError naming ``key``.
    """
    files = _audio_files_under(folder, key, where)
    clips, skipped, total = [], [], 0
    for index in np.random.default_rng(0).permutation(len(files)):
        try:
            clip = load_audio(files[index], target_sample_rate=sample_rate)
        except AudioError as error:
            skipped.append(str(error))
            continue
        if not np.any(clip):
            skipped.append(f"{files[index]}: silent")
            continue
        clips.append(clip)
        total += len(clip)
        if total >= MAX_BANK_SECONDS * sample_rate:
            break
    if skipped:
        logger.warning("%s: '%s': skipped %d unusable file(s), e.g. %s", where, key, len(skipped), skipped[0])
    if not clips:
        raise ConfigError(f"{where}: '{key}' {folder!r} holds no readable, non-silent audio")
    if len(clips) + len(skipped) < len(files):
        logger.info("%s: '%s': using %d of %d files (%.0f s, the cap per folder)", where, key, len(clips),
                    len(files), total / sample_rate)
    return clips


class WaveAugment(nn.Module):
    """Reverberation -> noise -> volume on a zero-padded batch ``[B, N]``, on the batch's device.

    The waveform augmentation that keeps lengths and labels, batched so that it costs a GPU next to
    nothing and never holds up the data loader (speed perturbation, which changes both, runs in the
    loader: ``SpeedPerturb``). Each row is reverberated, mixed with noise and changed in volume,
    each with its configured probability. Noise comes from ``noise.noise_dir`` when given, otherwise
    from the generated kinds (coloured noise, or babble made of other rows of the batch); RIRs from
    ``reverb.rir_dir`` or the simulated bank. Draws come from the global torch RNG of the batch's
    device, like SpecAugment's, whose state a training checkpoint holds. Identity in eval mode.
    """

    def __init__(self, conf: dict, sample_rate: int = 16000, where: str = "<augmentation config>",
                 rir_cache_dir=None):
        super().__init__()
        self.conf = conf
        noise, reverb = conf["noise"], conf["reverb"]
        self.noise_bank = (ClipBank(load_clip_folder(noise["noise_dir"], "noise.noise_dir", where, sample_rate))
                           if noise["noise_dir"] and noise["prob"] > 0 else None)
        self.generated = {name: GENERATED_NOISES[name]() for name in noise["generated"]}
        self.rir_bank = None
        if reverb["prob"] > 0:
            self.rir_bank = ClipBank(load_clip_folder(reverb["rir_dir"], "reverb.rir_dir", where, sample_rate)
                                     if reverb["rir_dir"] else
                                     load_rir_bank(sample_rate, reverb["num_simulated_rirs"], rir_cache_dir))

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor = None) -> torch.Tensor:
        if not self.training:
            return waveforms
        batch, size = waveforms.shape
        device = waveforms.device
        if lengths is None:
            lengths = torch.full((batch,), size, dtype=torch.long, device=device)
        lengths = lengths.to(device=device, dtype=torch.long)
        conf = self.conf
        out = waveforms.clone()
        rows = self._draw_rows(batch, conf["reverb"]["prob"], device)
        if len(rows):
            bank = self.rir_bank.to(device)
            picks = torch.randint(len(bank), (len(rows),), device=device)
            out[rows] = reverberate(out[rows], lengths[rows], bank.padded(picks))
        rows = self._draw_rows(batch, conf["noise"]["prob"], device)
        if len(rows):
            out[rows] = self._add_noise(out, waveforms, lengths, rows)
        rows = self._draw_rows(batch, conf["volume"]["prob"], device)
        if len(rows):
            low, high = conf["volume"]["min_gain_db"], conf["volume"]["max_gain_db"]
            gain_db = low + (high - low) * torch.rand(len(rows), device=device)
            out[rows] = out[rows] * (10.0 ** (gain_db / 20.0))[:, None].to(out.dtype)
        return out

    @staticmethod
    def _draw_rows(batch, prob, device) -> torch.Tensor:
        chosen = torch.rand(batch, device=device) < prob
        return chosen.nonzero().flatten()

    def _add_noise(self, out, dry, lengths, rows) -> torch.Tensor:
        """The chosen rows of ``out`` mixed with noise at a random SNR; babble is made of ``dry``'s rows."""
        device = out.device
        size = out.shape[1]
        conf = self.conf["noise"]
        if self.noise_bank is not None:
            bank = self.noise_bank.to(device)
            picks = torch.randint(len(bank), (len(rows),), device=device)
            noise = bank.crops(picks, size)
        else:
            kinds = [k for k in self.generated.values() if not k.needs_other_rows or len(dry) > 1]
            if not kinds:
                return out[rows]
            noise = torch.zeros(len(rows), size, device=device)
            choice = torch.randint(len(kinds), (len(rows),), device=device)
            for index, kind in enumerate(kinds):
                members = (choice == index).nonzero().flatten()
                if len(members):
                    noise[members] = kind(dry, lengths, rows[members], conf)
        snr_db = conf["min_snr_db"] + (conf["max_snr_db"] - conf["min_snr_db"]) * torch.rand(
            len(rows), device=device)
        return mix_at_snr(out[rows], noise, lengths[rows], snr_db)


def build_wave_augmentation(aug_conf_path, sample_rate: int = 16000, rir_cache_dir=None) -> tuple:
    """``(speed_perturb, wave_augment)`` of an augmentation file: the loader's part and the device's
    part. A null path gives ``(None, None)``; ``wave_augment`` is None when reverberation, noise and
    volume are all off."""
    if aug_conf_path is None:
        return None, None
    conf = load_augmentation_config(aug_conf_path)
    wave = (WaveAugment(conf, sample_rate, where=str(aug_conf_path), rir_cache_dir=rir_cache_dir)
            if any(conf[section]["prob"] > 0 for section in DEVICE_SECTIONS) else None)
    return SpeedPerturb(conf, sample_rate), wave


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
