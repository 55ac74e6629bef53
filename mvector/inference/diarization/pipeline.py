"""Who spoke when: speech regions, overlapping embedding windows, clustering, then segments.

The windows go through the predictor's own backend and batching, so any model directory and any
backend diarizes, and a recording is only ever held once in memory (windows are views into it).
"""
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from mvector.errors import AudioError, ConfigError
from mvector.inference.contract import MIN_DURATION
from mvector.inference.diarization.clustering import SpeakerClustering, check_speaker_counts
from mvector.inference.diarization.speech import SileroSpeechDetector, merge_regions

# Windows embedded between two updates of the progress bar (and the most held as a list at once).
WINDOWS_PER_STEP = 256


class Segment(NamedTuple):
    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Diarizer:
    """The settings of the pipeline. ``window`` / ``hop``: embedding windows (seconds) slid over
    each speech region; regions shorter than ``min_window`` are not embedded but take the speaker of
    the nearest embedded window. ``refine``: move each change of speaker to where short windows
    around it switch from one speaker's centroid to the other's (``refine_window`` s long, one every
    ``refine_step`` s, within a window of the change)."""

    window: float = 1.5
    hop: float = 0.75
    min_window: float = 0.5
    refine: bool = True
    refine_window: float = 1.0
    refine_step: float = 0.5
    speech: object = field(default_factory=SileroSpeechDetector)
    clustering: SpeakerClustering = field(default_factory=SpeakerClustering)

    def __post_init__(self):
        if not MIN_DURATION <= self.min_window <= self.window:
            raise ConfigError(f"min_window must be in [{MIN_DURATION}, window={self.window}] s, got {self.min_window!r}")
        if not 0 < self.hop <= self.window:
            raise ConfigError(f"hop must be in (0, window={self.window}] s, got {self.hop!r}")
        if self.refine_window < MIN_DURATION or self.refine_step <= 0:
            raise ConfigError(f"refine_window must be >= {MIN_DURATION} s and refine_step > 0")

    def __call__(self, predictor, wav: np.ndarray, *, num_speakers=None, min_speakers=1, max_speakers=None,
                 timestamps=None, name=None, progress=False) -> list:
        """Segments ``[(start, end, label)]`` of ``wav`` (loaded at the predictor's rate), labels
        ``0, 1, ...`` by first appearance; the embeddings' cluster centroids come back with them."""
        check_speaker_counts(num_speakers, min_speakers, max_speakers)
        rate = predictor.sample_rate
        duration = len(wav) / rate
        name = name or "the recording"
        if timestamps is None:
            with tqdm(total=100, unit="%", desc="speech detection", disable=not progress,
                      bar_format="{l_bar}{bar}| {elapsed}<{remaining}") as bar:
                regions = self.speech.regions(wav, rate, on_progress=lambda percent: bar.update(percent - bar.n))
        else:
            regions = _checked_timestamps(timestamps, duration, name)
        windows = self._windows(regions)
        if not windows:
            raise AudioError(f"{name}: no speech found long enough to tell speakers apart "
                             f"(needs a stretch of at least {self.min_window} s)")
        embeddings = self._embed(predictor, wav, windows, progress)
        labels = self.clustering(embeddings, num_speakers, min_speakers, max_speakers)
        centroids = np.stack([embeddings[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        spans = _label_spans(regions, windows, labels)
        if self.refine and len(centroids) > 1:
            spans = self._refine(predictor, wav, spans, centroids)
        return _merge_spans(spans), centroids

    def _windows(self, regions) -> list:
        """``(start, end)`` seconds of each embedding window, in time order."""
        windows = []
        for start, end in regions:
            length = end - start
            if length < self.min_window:
                continue
            if length <= self.window:
                windows.append((start, end))
                continue
            count = int(np.ceil((length - self.window) / self.hop)) + 1
            starts = np.minimum(start + self.hop * np.arange(count), end - self.window)
            windows.extend((float(s), float(s) + self.window) for s in starts)
        return windows

    def _embed(self, predictor, wav, windows, progress) -> np.ndarray:
        rate = predictor.sample_rate
        embeddings = np.zeros((len(windows), predictor.embd_dim), dtype=np.float32)
        with tqdm(total=len(windows), unit="window", desc="speaker embeddings", disable=not progress) as bar:
            for first in range(0, len(windows), WINDOWS_PER_STEP):
                step = windows[first: first + WINDOWS_PER_STEP]
                views = [wav[round(s * rate): round(e * rate)] for s, e in step]
                embeddings[first: first + len(step)] = predictor.embed_waveforms(views)
                bar.update(len(step))
        return embeddings

    def _refine(self, predictor, wav, spans, centroids) -> list:
        """Each change of speaker inside a region moved to where short windows around it stop
        resembling the first speaker more than the second."""
        rate = predictor.sample_rate
        half = self.refine_window / 2
        changes = [i for i in range(1, len(spans))
                   if spans[i][0] == spans[i - 1][1] and spans[i][2] != spans[i - 1][2]]
        if not changes:
            return spans
        plans, views = [], []
        for i in changes:
            low = max(spans[i - 1][0] + half, spans[i][0] - self.hop)
            high = min(spans[i][1] - half, spans[i][0] + self.hop)
            centres = np.arange(low, high + 1e-9, self.refine_step)
            if len(centres) < 2:
                continue
            plans.append((i, centres))
            views.extend(wav[round((c - half) * rate): round((c + half) * rate)] for c in centres)
        if not views:
            return spans
        embeddings = predictor.embed_waveforms(views)
        spans = [list(span) for span in spans]
        used = 0
        for i, centres in plans:
            scores = embeddings[used: used + len(centres)] @ centroids.T
            used += len(centres)
            before, after = spans[i - 1][2], spans[i][2]
            leaning = scores[:, before] - scores[:, after]  # > 0: sounds like the speaker before the change
            # The split point agreeing best with the windows: before it they lean to `before`, after it to `after`.
            agreement = [np.sum(leaning[:k] > 0) + np.sum(leaning[k:] < 0) for k in range(len(centres) + 1)]
            best = int(np.argmax(agreement))
            if 0 < best < len(centres):
                boundary = float((centres[best - 1] + centres[best]) / 2)
            else:
                boundary = float(centres[0] - self.refine_step / 2 if best == 0 else centres[-1] + self.refine_step / 2)
            boundary = min(max(boundary, spans[i - 1][0] + 0.01), spans[i][1] - 0.01)
            spans[i - 1][1] = spans[i][0] = boundary
        return [tuple(span) for span in spans]


def _checked_timestamps(timestamps, duration, name) -> list:
    regions = []
    for item in timestamps:
        try:
            start, end = (float(v) for v in item)
        except (TypeError, ValueError):
            raise ConfigError(f"timestamps must be (start, end) pairs of seconds, got {item!r}") from None
        if not 0 <= start < end:
            raise ConfigError(f"timestamps: ({start}, {end}) is not a span with 0 <= start < end")
        if start >= duration:
            raise ConfigError(f"timestamps: ({start}, {end}) starts after the end of {name} ({duration:.2f} s)")
        regions.append((start, min(end, duration)))
    return merge_regions(regions)


def _label_spans(regions, windows, labels) -> list:
    """``[(start, end, label)]`` covering every region: each window speaks for the stretch nearer its
    centre than its neighbours'; a region with no window of its own takes the nearest window's label."""
    centres = np.array([(s + e) / 2 for s, e in windows])
    spans = []
    for start, end in regions:
        inside = np.flatnonzero((centres >= start) & (centres <= end))
        if len(inside) == 0:
            nearest = int(np.argmin(np.abs(centres - (start + end) / 2)))
            spans.append((start, end, int(labels[nearest])))
            continue
        edges = [start] + [float((centres[a] + centres[b]) / 2) for a, b in zip(inside[:-1], inside[1:])] + [end]
        spans.extend((edges[k], edges[k + 1], int(labels[w])) for k, w in enumerate(inside))
    return spans


def _merge_spans(spans) -> list:
    """Adjacent spans of the same label joined."""
    merged = []
    for start, end, label in spans:
        if merged and merged[-1][2] == label and start <= merged[-1][1] + 1e-9:
            merged[-1] = (merged[-1][0], end, label)
        elif end > start:
            merged.append((start, end, label))
    return merged
