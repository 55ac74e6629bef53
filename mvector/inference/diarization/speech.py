"""Where in a recording someone speaks.

``SileroSpeechDetector`` (the default) runs Silero VAD, a small neural detector whose weights ship
inside its wheel (``silero-vad``, MIT); it tells speech from the noise of a meeting room, which an
energy detector cannot (on the AMI excerpts it halves the diarization error). ``SpeechDetector``
is the energy detector, for installations without it.
"""
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mvector.errors import ConfigError, MVectorError


@dataclass(frozen=True)
class SileroSpeechDetector:
    """Silero VAD's speech probability above ``threshold`` is speech; runs shorter than
    ``min_speech`` s are dropped, pauses shorter than ``min_pause`` s bridged, and ``pad`` s kept on
    both sides of each region."""

    threshold: float = 0.3
    min_speech: float = 0.25
    min_pause: float = 0.3
    pad: float = 0.3

    def regions(self, wav: np.ndarray, sample_rate: int, on_progress=None) -> list:
        """Speech regions ``[(start, end)]`` in seconds, in time order; ``on_progress(percent)`` is
        called as the detector advances."""
        if sample_rate not in (8000, 16000):
            raise ConfigError(f"Silero VAD works at 8 or 16 kHz, not {sample_rate} Hz; use SpeechDetector")
        import torch
        get_speech_timestamps, model, lock = _silero()
        with lock:  # the model carries its recurrent state between chunks: one recording at a time
            found = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wav)), model, threshold=self.threshold,
                                          sampling_rate=sample_rate, min_speech_duration_ms=round(self.min_speech * 1000),
                                          min_silence_duration_ms=round(self.min_pause * 1000),
                                          speech_pad_ms=round(self.pad * 1000),
                                          progress_tracking_callback=on_progress)
        return merge_regions((item["start"] / sample_rate, item["end"] / sample_rate) for item in found)


@lru_cache(maxsize=1)
def _silero():
    """Silero VAD's ONNX model (twice as fast on the CPU as its TorchScript one), loaded once."""
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    except ImportError as exc:
        raise MVectorError("speech detection for diarization needs silero-vad: "
                           "pip install 'mvector-sv[diarization]'") from exc
    with warnings.catch_warnings():  # its loader uses a deprecated importlib call: not the user's concern
        warnings.simplefilter("ignore", DeprecationWarning)
        model = load_silero_vad(onnx=True)
    return get_speech_timestamps, model, threading.Lock()


@dataclass(frozen=True)
class SpeechDetector:
    """Frames (``frame_seconds`` long, one every ``hop_seconds``) louder than the recording's noise
    floor (its ``floor_percentile`` frame energy) by ``margin_db`` are speech; runs of speech shorter
    than ``min_speech`` s are dropped, pauses shorter than ``min_pause`` s are bridged, and ``pad`` s
    are kept on both sides of each region so soft onsets survive."""

    frame_seconds: float = 0.03
    hop_seconds: float = 0.01
    floor_percentile: float = 10.0
    margin_db: float = 10.0
    min_speech: float = 0.25
    min_pause: float = 0.3
    pad: float = 0.1

    def regions(self, wav: np.ndarray, sample_rate: int, on_progress=None) -> list:
        """Speech regions ``[(start, end)]`` in seconds, in time order (fast enough to need no
        ``on_progress``, which it takes only to be interchangeable with SileroSpeechDetector)."""
        frame, hop = round(self.frame_seconds * sample_rate), round(self.hop_seconds * sample_rate)
        if len(wav) < frame:
            return []
        count = 1 + (len(wav) - frame) // hop
        energy = np.empty(count)
        for first in range(0, count, 8192):  # frames in blocks: an hour-long recording stays in bounded memory
            last = min(count, first + 8192)
            frames = np.lib.stride_tricks.as_strided(wav[first * hop:], shape=(last - first, frame),
                                                     strides=(wav.strides[0] * hop, wav.strides[0]))
            energy[first:last] = np.mean(np.square(frames, dtype=np.float64), axis=1)
        level = 10.0 * np.log10(energy + 1e-12)
        active = level > np.percentile(level, self.floor_percentile) + self.margin_db
        runs = _runs(active)
        seconds = [(start * self.hop_seconds, (end - 1) * self.hop_seconds + self.frame_seconds) for start, end in runs]
        bridged = []
        for start, end in seconds:
            if bridged and start - bridged[-1][1] < self.min_pause:
                bridged[-1] = (bridged[-1][0], end)
            else:
                bridged.append((start, end))
        duration = len(wav) / sample_rate
        return [(max(0.0, start - self.pad), min(duration, end + self.pad))
                for start, end in bridged if end - start >= self.min_speech]


def _runs(mask: np.ndarray) -> list:
    """``[(first, past_last)]`` index ranges where ``mask`` is True."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def merge_regions(regions) -> list:
    """Regions sorted, with overlapping or touching ones joined (padding can make neighbours meet)."""
    merged = []
    for start, end in sorted(regions):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
