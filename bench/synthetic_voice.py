"""Voice-like test audio for the benchmarks: no speech data needed, yet not plain noise.

A sawtooth source (every harmonic of a wandering pitch) through three vowel formants, in syllables
of a quarter second with pauses between some of them, plus a faint breath-noise floor. VAD,
loudness normalisation and the feature front-end see what they would see on speech: voiced
harmonics, formant structure, silences.
"""
import numpy as np
from scipy.signal import lfilter

# (F1, F2, F3) in Hz of five vowels (a, i, u, e, o), and the formant bandwidth.
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
BANDWIDTH = 90.0
SYLLABLE_SECONDS = 0.25
PAUSE_PROBABILITY = 0.2


def _resonator(freq, sample_rate):
    """Two-pole filter peaking at ``freq``: one formant."""
    radius = np.exp(-np.pi * BANDWIDTH / sample_rate)
    angle = 2 * np.pi * freq / sample_rate
    return [1 - radius], [1, -2 * radius * np.cos(angle), radius ** 2]


def voice_like(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """``seconds`` of mono float32 voice-like audio in [-1, 1], the same for the same seed."""
    rng = np.random.default_rng(seed)
    total = int(round(seconds * sample_rate))
    out = np.zeros(total, dtype=np.float32)
    filters = [[_resonator(f, sample_rate) for f in formants] for formants in VOWELS]
    base_pitch = rng.uniform(100.0, 220.0)  # one speaker's voice
    step = int(SYLLABLE_SECONDS * sample_rate)
    phase = 0.0
    for start in range(0, total, step):
        size = min(step, total - start)
        if rng.random() < PAUSE_PROBABILITY:
            continue
        t = np.arange(size) / sample_rate
        pitch = base_pitch * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 2 * np.pi)))
        cycles = phase + np.cumsum(pitch / sample_rate)
        phase = cycles[-1]
        signal = 2 * (cycles % 1.0) - 1  # sawtooth
        for b, a in filters[rng.integers(len(VOWELS))]:
            signal = lfilter(b, a, signal)
        envelope = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
        out[start:start + size] = envelope * signal / max(np.abs(signal).max(), 1e-9) * rng.uniform(0.3, 1.0)
    out += 0.003 * rng.standard_normal(total).astype(np.float32)
    return (0.5 * out / max(float(np.abs(out).max()), 1e-9)).astype(np.float32)
