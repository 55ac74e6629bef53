"""Noise sources: user clips decoded once into a bank, generated coloured noise and babble from the batch."""
import logging
from pathlib import Path

import numpy as np
import torch

from mvector.audio import AUDIO_EXTENSIONS, load_audio
from mvector.errors import AudioError, ConfigError
from mvector.registry import Registry
from mvector.training.augment.ops import coloured_noise, loop_crops, mean_power

logger = logging.getLogger(__name__)


# Noise and RIR folders are decoded into memory once: at most this much audio from each.
MAX_BANK_SECONDS = 3600.0


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
