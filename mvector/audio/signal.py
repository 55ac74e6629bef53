"""Signal processing on float32 mono samples: resampling, loudness normalisation, trimming silence."""
import math

import numpy as np
import soxr

from mvector.errors import AudioError, ConfigError


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample 1-D ``wav`` with soxr's high-quality preset: the same call librosa.resample
    (res_type='soxr_hq') makes, without importing librosa. The length is fixed to
    ceil(len * target_sr / orig_sr), as librosa does, so lengths are predictable."""
    orig_sr = positive_rate(orig_sr, "orig_sr", ConfigError)
    target_sr = positive_rate(target_sr, "target_sr", ConfigError)
    if orig_sr == target_sr:
        return wav
    out = soxr.resample(np.asarray(wav, dtype=np.float32), orig_sr, target_sr, quality="HQ")
    expected = -(-len(wav) * target_sr // orig_sr)
    if len(out) >= expected:
        return out[:expected]
    return np.pad(out, (0, expected - len(out)))


def normalize_db(wav: np.ndarray, target_db: float) -> np.ndarray:
    """Scale ``wav`` so its RMS level is ``target_db`` dBFS (e.g. -20). A pure gain: peaks
    may exceed 1.0, which float features handle; clipping would distort the voice."""
    if not isinstance(target_db, (int, float)) or not math.isfinite(target_db):
        raise ConfigError(f"normalize_db must be a finite level in dBFS, got {target_db!r}")
    rms = math.sqrt(float(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    if rms == 0.0:
        raise AudioError(f"cannot normalise audio with no energy to {target_db:g} dBFS")
    gain = 10.0 ** (target_db / 20.0) / rms
    return np.multiply(wav, np.float32(gain), dtype=np.float32)


def vad_trim(
    wav: np.ndarray,
    sample_rate: int,
    *,
    threshold_db: float = -40.0,
    frame_duration: float = 0.02,
    margin: float = 0.1,
) -> np.ndarray:
    """Cut leading and trailing non-speech: frames whose mean energy is more than
    ``-threshold_db`` dB below the loudest frame's. Relative to the utterance's own maximum,
    so it needs no calibration to the recording level; ``margin`` seconds are kept on each
    side so soft onsets and endings survive. Returns a view into ``wav``."""
    sample_rate = positive_rate(sample_rate, "sample_rate", ConfigError)
    frame = max(1, round(frame_duration * sample_rate))
    if len(wav) <= frame:
        return wav
    starts = np.arange(0, len(wav), frame)
    lengths = np.diff(np.append(starts, len(wav)))
    energy = np.add.reduceat(np.square(wav, dtype=np.float64), starts) / lengths
    active = np.flatnonzero(energy >= energy.max() * 10.0 ** (threshold_db / 10.0))
    keep = round(margin * sample_rate)
    begin = max(0, int(starts[active[0]]) - keep)
    end = min(len(wav), int(starts[active[-1]] + lengths[active[-1]]) + keep)
    return wav[begin:end]


def positive_rate(value, what: str, error: type, name: str | None = None) -> int:
    prefix = f"{name}: " if name else ""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{prefix}{what} must be a positive integer in Hz, got {value!r}")
    if not (math.isfinite(value) and value > 0 and value == int(value)):
        raise error(f"{prefix}{what} must be a positive integer in Hz, got {value!r}")
    return int(value)


def mix_to_mono(wav: np.ndarray, channel_axis: int) -> np.ndarray:
    if wav.shape[channel_axis] == 1:
        return wav[:, 0] if channel_axis == 1 else wav[0]
    return wav.mean(axis=channel_axis, dtype=np.float32)
