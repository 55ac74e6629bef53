"""Embeddings of every file in a list, saved as ``.npz`` (``paths``, ``embeddings``).

The list has one audio path per line, or ``path<TAB>label...`` (only the first column is read);
relative paths are resolved against the list's folder, as for the dataset lists. Files that cannot
be used are skipped and reported: one bad recording never stops the extraction of thousands.
"""
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mvector.errors import MVectorError
from mvector.fileio import atomic_file
from mvector.lists import read_path_list

# How many unusable files a report names.
REPORTED_FAILURES = 5


def embed_files(predictor, paths, progress: bool = True):
    """``(kept_paths, embeddings[K, E], failures[(path, reason)])`` of audio files, through
    ``predictor`` (an MVectorPredictor), batch_size files at a time so memory stays bounded."""
    kept, parts, failures = [], [], []
    step = predictor.batch_size
    with tqdm(total=len(paths), unit="file", desc="embeddings", disable=not progress) as bar:
        for start in range(0, len(paths), step):
            chunk, waves = [], []
            for path in paths[start: start + step]:
                try:
                    waves.append(predictor.load(path))
                    chunk.append(path)
                except MVectorError as exc:
                    failures.append((path, str(exc)))
            if waves:
                parts.append(predictor.embed_waveforms(waves))
                kept.extend(chunk)
            bar.update(min(step, len(paths) - start))
    embeddings = np.concatenate(parts) if parts else np.zeros((0, predictor.embd_dim), dtype=np.float32)
    return kept, embeddings, failures


def _examples(failures) -> str:
    """The first few failures as ``path: problem; ...`` (AudioError messages already name the path)."""
    shown = "; ".join(reason if reason.startswith(path) else f"{path}: {reason}"
                      for path, reason in failures[:REPORTED_FAILURES])
    more = f" (and {len(failures) - REPORTED_FAILURES} more)" if len(failures) > REPORTED_FAILURES else ""
    return shown + more


def describe_failures(failures, total: int) -> str:
    """One line: how many files were skipped and why, naming the first few."""
    return f"skipped {len(failures)} of {total} file(s) that could not be used: {_examples(failures)}"


def save_embeddings(out_path, paths, embeddings) -> Path:
    """Write ``paths`` and ``embeddings`` to ``out_path`` (.npz) atomically: never a half-written file."""
    out_path = Path(out_path)
    with atomic_file(out_path, "wb") as fh:
        np.savez(fh, paths=np.array(paths, dtype=str), embeddings=np.asarray(embeddings, dtype=np.float32))
    return out_path


def extract_to_npz(predictor, list_path, out_path, progress: bool = True):
    """Embed every file of ``list_path`` into ``out_path``; returns ``(num_written, total, failures)``.
    MVectorError when no file at all could be used."""
    paths = read_path_list(list_path)
    kept, embeddings, failures = embed_files(predictor, paths, progress)
    if not kept:
        raise MVectorError(f"{list_path}: none of its {len(paths)} file(s) could be used: {_examples(failures)}")
    save_embeddings(out_path, kept, embeddings)
    return len(kept), len(paths), failures
