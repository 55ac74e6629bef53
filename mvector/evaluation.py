"""Speaker-verification evaluation of an embedder: embeddings of a file list, then EER and MinDCF
on a trial list (``path1<TAB>path2<TAB>1|0``) or on enrol x test lists (``path<TAB>label[<TAB>duration]``).

The trainer calls ``evaluate_trials`` / ``evaluate_cross`` with its in-memory embedder after each
epoch; ``eval.py`` calls them with a model directory's. A file that cannot be used is reported and
its trials dropped: one bad recording never stops an evaluation of thousands.
"""
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mvector.audio import audio_duration, load_audio
from mvector.audio.spec import AudioSpec
from mvector.embedder import window_starts
from mvector.device import loader_workers
from mvector.errors import AudioError, MVectorError
from mvector.lists import read_labelled_list, read_trials
from mvector.metrics import (AS_NORM_TOP_K, apply_as_norm, cohort_stats, cosine_score_matrix, det_curve,
                             pair_scores, verification_metrics)

logger = logging.getLogger(__name__)

# Trials are scored in chunks so a list of millions never gathers millions of embedding pairs at once.
PAIR_CHUNK = 1 << 16
# How many unusable files the report names.
REPORTED_FAILURES = 5


class _AudioBatches(Dataset):
    """Each item is one batch of utterances, decoded and cropped, as padded windows
    (``mvector.embedder.window_starts``) with the utterance each window belongs to, and the files
    that failed."""

    def __init__(self, batches, sample_rate: int, min_samples: int, max_samples: int, normalize_db, vad: bool,
                 window: int, hop: int):
        self.batches = batches
        self.sample_rate = sample_rate
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.normalize_db = normalize_db
        self.vad = vad
        self.window = window
        self.hop = hop

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        loaded, windows, owners, failed = [], [], [], []
        for path in self.batches[index]:
            try:
                wav = load_audio(path, target_sample_rate=self.sample_rate, normalize_db=self.normalize_db,
                                 vad=self.vad)
            except Exception as exc:  # any decoder failure is one bad file, not a failed evaluation
                failed.append((path, str(exc) or type(exc).__name__))
                continue
            if len(wav) < self.min_samples:
                failed.append((path, f"too short for the model: {len(wav) / self.sample_rate:.3f} s < "
                                     f"{self.min_samples / self.sample_rate:.3f} s"))
                continue
            wav = torch.from_numpy(wav[: self.max_samples])
            for start in window_starts(len(wav), self.window, self.hop):
                windows.append(wav[start: start + self.window])
                owners.append(len(loaded))
            loaded.append(path)
        lengths = torch.tensor([len(w) for w in windows], dtype=torch.long)
        padded = pad_sequence(windows, batch_first=True) if windows else torch.zeros(0, 0)
        return loaded, padded, lengths, torch.tensor(owners, dtype=torch.long), failed


def _durations(paths, known: dict, failures: list):
    """Duration of each path (from ``known`` or the file header); unreadable files go to ``failures``."""
    durations = {}
    for path in paths:
        if path in known:
            durations[path] = known[path]
            continue
        try:
            durations[path] = audio_duration(path)
        except Exception as exc:  # reported with the other unusable files
            failures.append((path, str(exc) or type(exc).__name__))
    return durations


def _report_failures(failures, total: int):
    if not failures:
        return
    examples = "; ".join(f"{path} ({reason})" for path, reason in failures[:REPORTED_FAILURES])
    logger.warning("skipped %d of %d audio file(s) that could not be used, e.g. %s", len(failures), total, examples)


def _embed_batch(embedder, paths, waves, lengths, owners, batch_size: int, embeddings: dict, failures: list):
    """Embed one batch of utterances into ``embeddings``: each is the renormalised mean of the
    normalised embeddings of its windows (rows of ``waves`` whose ``owners`` is its index in
    ``paths``), run at most ``batch_size`` windows per pass (fewer where the embedder says so). A batch
    the model refuses (audio too short for it) is retried one utterance at a time so only the
    offending files are reported."""
    step = min(batch_size, embedder.utterances_per_pass(waves.shape[1], waves.device))
    try:
        vectors = torch.cat([embedder(waves[i: i + step], lengths[i: i + step]).float()
                             for i in range(0, len(waves), step)])
    except AudioError as exc:
        if len(paths) == 1:
            failures.append((paths[0], str(exc)))
            return
        for i, path in enumerate(paths):
            rows = owners == i
            _embed_batch(embedder, [path], waves[rows][:, : int(lengths[rows].max())], lengths[rows],
                         torch.zeros_like(owners[rows]), batch_size, embeddings, failures)
        return
    sums = vectors.new_zeros(len(paths), vectors.shape[1]).index_add_(0, owners, F.normalize(vectors, dim=1))
    for path, vector in zip(paths, F.normalize(sums, dim=1).cpu().numpy()):
        if np.isfinite(vector).all():
            embeddings[path] = vector
        else:
            failures.append((path, "the model gave a non-finite embedding"))


def extract_embeddings(embedder, paths, batch_size=32, max_duration=20.0, device="cpu", num_workers=2,
                       progress=True, *, normalize_db=None, vad=False, durations=None, window=10.0,
                       hop=5.0) -> dict:
    """Embeddings of audio files: ``{path: L2-normalised float32 embedding}``.

    Utterances are sorted by duration and batched with others of similar length (padding is cut to a
    minimum; the embedder ignores it given the lengths), cropped to their first ``max_duration``
    seconds. One longer than ``window`` seconds is embedded as the mean of windows that long every
    ``hop`` seconds, as MVectorPredictor embeds it. ``normalize_db`` and ``vad`` are the dataset's
    loudness normalisation (dBFS or None) and VAD settings. ``durations`` (path -> seconds, e.g. from
    a list's third column) saves reading headers. Files that cannot be used are logged (count and
    first names) and absent from the result. The embedder must be on ``device``; it runs in eval
    mode and is put back in its mode afterwards.
    """
    if batch_size < 1:
        raise MVectorError(f"batch_size must be >= 1, got {batch_size}")
    if not max_duration > 0:
        raise MVectorError(f"max_duration must be > 0 seconds, got {max_duration}")
    unique = list(dict.fromkeys(str(p) for p in paths))
    failures = []
    lengths = _durations(unique, durations or {}, failures)
    # Longest first: a batch too big for memory fails at once, not at the end.
    ordered = sorted(lengths, key=lambda p: -min(lengths[p], max_duration))
    batches = [ordered[i: i + batch_size] for i in range(0, len(ordered), batch_size)]
    sample_rate = embedder.sample_rate
    if not 0 < hop <= window:
        raise MVectorError(f"embedding windows: hop must be in (0, window={window}] seconds, got {hop!r}")
    dataset = _AudioBatches(batches, sample_rate, embedder.min_samples(), int(round(max_duration * sample_rate)),
                            normalize_db, vad, int(round(window * sample_rate)), int(round(hop * sample_rate)))
    workers = min(num_workers, len(batches))
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=torch.device(device).type == "cuda")

    embeddings = {}
    was_training = embedder.training
    embedder.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(unique), unit="utt", desc="embeddings",
                                          disable=not progress, leave=False) as bar:
            for loaded, waves, wave_lengths, owners, failed in loader:
                failures.extend(failed)
                if loaded:
                    _embed_batch(embedder, loaded, waves.to(device, non_blocking=True), wave_lengths.to(device),
                                 owners.to(device), batch_size, embeddings, failures)
                bar.update(len(loaded) + len(failed))
    finally:
        embedder.train(was_training)
    _report_failures(failures, len(unique))
    return embeddings


def _extraction_settings(config, batch_size, num_workers):
    data, spec = config["dataset_conf"], AudioSpec.from_config(config)
    return dict(batch_size=batch_size or data["eval_batch_size"], max_duration=data["eval_max_duration"],
                num_workers=loader_workers(data["num_workers"] if num_workers is None else num_workers),
                normalize_db=spec.target_db, vad=spec.vad, window=spec.window_seconds, hop=spec.hop_seconds)


def cohort_embeddings(embedder, cohort_list, config, device="cpu", *, batch_size=None, num_workers=None,
                      progress=True) -> np.ndarray:
    """AS-Norm cohort from a list ``path<TAB>label``: one L2-normalised mean embedding per speaker label."""
    paths, labels, durations = read_labelled_list(cohort_list)
    embeddings = extract_embeddings(embedder, paths, device=device, progress=progress, durations=durations,
                                    **_extraction_settings(config, batch_size, num_workers))
    speakers, _ = _speaker_means(paths, labels, embeddings)
    if len(speakers) == 0:
        raise MVectorError(f"AS-Norm cohort {cohort_list}: none of its files could be used")
    return speakers


def _speaker_means(paths, labels, embeddings):
    """``(means[S, D], labels[S])``: the normalised mean embedding of each label's usable files."""
    grouped = defaultdict(list)
    for path, label in zip(paths, labels):
        if path in embeddings:
            grouped[label].append(embeddings[path])
    names = list(grouped)
    if not names:
        return np.zeros((0, 0), dtype=np.float32), names
    means = np.stack([np.mean(grouped[name], axis=0) for name in names])
    return F.normalize(torch.from_numpy(means), dim=1).numpy(), names


def _check_cohort(cohort):
    cohort = np.asarray(cohort, dtype=np.float32)
    if cohort.ndim != 2 or len(cohort) == 0:
        raise MVectorError(f"AS-Norm cohort must be a non-empty [count, dim] array of embeddings, "
                           f"got shape {cohort.shape}")
    return cohort


def _finish(scores, labels, skipped: int, det_plot_path) -> dict:
    result = verification_metrics(scores, labels)
    result.update(num_trials=int(np.size(labels)), skipped_trials=int(skipped))
    if det_plot_path:
        plot_det(scores, labels, det_plot_path, eer=result["eer"])
    return result


def evaluate_trials(embedder, trials_path, config, device="cpu", *, cohort=None, top_k=AS_NORM_TOP_K,
                    det_plot_path=None, batch_size=None, num_workers=None, progress=True) -> dict:
    """EER, MinDCF (p_target 0.01 and 0.05), threshold and trial counts on a trial list.

    ``cohort`` (``[C, D]`` embeddings, e.g. from ``cohort_embeddings``) turns on AS-Norm. Trials with
    a file that cannot be used are dropped and counted in ``skipped_trials``.
    """
    paths1, paths2, labels = read_trials(trials_path)
    embeddings = extract_embeddings(embedder, paths1 + paths2, device=device, progress=progress,
                                    **_extraction_settings(config, batch_size, num_workers))
    return score_trials(embeddings, paths1, paths2, labels, trials_path, cohort=cohort, top_k=top_k,
                        det_plot_path=det_plot_path)


def score_trials(embeddings: dict, paths1, paths2, labels, trials_path, *, cohort=None, top_k=AS_NORM_TOP_K,
                 det_plot_path=None) -> dict:
    """Metrics of a trial list from embeddings by path; trials missing an embedding are dropped."""
    names = list(embeddings)
    index = {name: i for i, name in enumerate(names)}
    first = np.array([index.get(p, -1) for p in paths1])
    second = np.array([index.get(p, -1) for p in paths2])
    usable = (first >= 0) & (second >= 0)
    if not usable.any():
        raise MVectorError(f"{trials_path}: no trial has two usable audio files")
    first, second, labels = first[usable], second[usable], labels[usable]
    matrix = np.stack([embeddings[name] for name in names])
    scores = np.concatenate([pair_scores(matrix[first[i: i + PAIR_CHUNK]], matrix[second[i: i + PAIR_CHUNK]])
                             for i in range(0, len(first), PAIR_CHUNK)])
    if cohort is not None:
        # Cohort statistics once per utterance, then looked up per trial.
        mean, std = cohort_stats(cosine_score_matrix(matrix, _check_cohort(cohort)), top_k)
        scores = apply_as_norm(scores, (mean[first], std[first]), (mean[second], std[second]))
    skipped = int(np.count_nonzero(~usable))
    if skipped:
        logger.warning("%s: dropped %d trial(s) with an unusable file", trials_path, skipped)
    return _finish(scores, labels, skipped, det_plot_path)


def evaluate_cross(embedder, enroll_list, trials_list, config, device="cpu", *, cohort=None, top_k=AS_NORM_TOP_K,
                   det_plot_path=None, batch_size=None, num_workers=None, progress=True) -> dict:
    """EER and MinDCF of every speaker model against every test utterance.

    A speaker model is the mean embedding of the enrol utterances of one label; a trial is a target
    when the test utterance has the model's label. ``cohort`` turns on AS-Norm.
    """
    enroll_paths, enroll_labels, enroll_durations = read_labelled_list(enroll_list)
    test_paths, test_labels, test_durations = read_labelled_list(trials_list)
    embeddings = extract_embeddings(embedder, enroll_paths + test_paths, device=device, progress=progress,
                                    durations={**enroll_durations, **test_durations},
                                    **_extraction_settings(config, batch_size, num_workers))
    models, model_labels = _speaker_means(enroll_paths, enroll_labels, embeddings)
    tests = [(p, label) for p, label in zip(test_paths, test_labels) if p in embeddings]
    if len(model_labels) == 0 or not tests:
        raise MVectorError(f"{enroll_list} / {trials_list}: no usable enrol or test audio")
    test_matrix = np.stack([embeddings[p] for p, _ in tests])
    scores = cosine_score_matrix(models, test_matrix)
    # Labels as integer codes: comparing millions of strings one by one would dominate the scoring.
    codes = {label: code for code, label in enumerate(dict.fromkeys(list(model_labels) + [t for _, t in tests]))}
    model_codes = np.array([codes[label] for label in model_labels])
    test_codes = np.array([codes[label] for _, label in tests])
    labels = model_codes[:, None] == test_codes[None, :]
    if cohort is not None:
        cohort = _check_cohort(cohort)
        scores = apply_as_norm(scores, cohort_stats(cosine_score_matrix(models, cohort), top_k),
                               cohort_stats(cosine_score_matrix(test_matrix, cohort), top_k))
    skipped = len(set(enroll_labels)) * len(test_paths) - scores.size
    if skipped:
        logger.warning("%s / %s: dropped %d trial(s) with unusable audio", enroll_list, trials_list, skipped)
    return _finish(scores, labels, skipped, det_plot_path)


def plot_det(scores, labels, path, eer=None, max_points=20000):
    """Write the DET curve (miss vs false-alarm rate on normal-deviate axes) as a PNG."""
    # Imported here: matplotlib is slow to import and only needed when a plot is asked for.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy.special import ndtri

    curve = det_curve(scores, labels)
    step = max(1, len(curve.fpr) // max_points)
    fpr, fnr = curve.fpr[::step], curve.fnr[::step]
    floor = 1e-5  # rates of 0 and 1 lie at infinity on these axes
    ticks = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6])
    figure = Figure(figsize=(5, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(ndtri(np.clip(fpr, floor, 1 - floor)), ndtri(np.clip(fnr, floor, 1 - floor)), label="DET")
    if eer is not None:
        axes.plot([ndtri(max(eer, floor))], [ndtri(max(eer, floor))], "o", label=f"EER {eer:.2%}")
    axes.plot(ndtri(ticks[[0, -1]]), ndtri(ticks[[0, -1]]), ":", color="gray")
    axes.set_xticks(ndtri(ticks), [f"{t:.1%}" for t in ticks], rotation=45)
    axes.set_yticks(ndtri(ticks), [f"{t:.1%}" for t in ticks])
    axes.set_xlim(ndtri(ticks[0]), ndtri(ticks[-1]))
    axes.set_ylim(ndtri(ticks[0]), ndtri(ticks[-1]))
    axes.set_xlabel("false alarm rate")
    axes.set_ylabel("miss rate")
    axes.grid(True, alpha=0.4)
    axes.legend(loc="lower left")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
