"""Every TAB-separated list mvector reads or writes, and the one rule for the paths in them.

A relative path in a list is relative to the list's own folder, so a list and its audio can move
together; an absolute path is kept as written. Paths come back absolute (symlinks not resolved, so
two lists naming one file through the same folders agree), which makes any list written from them
mean the same files wherever it is read. Every reader names the file and line of the first
malformed row, and an empty or unreadable list is an error, never an empty result.
"""
import math
import os
from pathlib import Path

import numpy as np

from mvector.errors import ConfigError
from mvector.fileio import atomic_file, read_list_lines


def path_under(folder, entry: str) -> str:
    """``entry`` read relative to ``folder`` (an absolute entry kept), as an absolute path."""
    return os.path.abspath(os.path.join(folder, entry))


def listed_path(list_path, entry: str) -> str:
    """The file a list at ``list_path`` means by ``entry``."""
    return path_under(Path(list_path).parent, entry)


def read_rows(list_path, what: str, layout: str, min_columns: int, max_columns: int | None = None):
    """``[(line_number, fields), ...]`` of the non-empty lines; ``layout`` describes a row for the error."""
    list_path = Path(list_path)
    rows = []
    for number, line in enumerate(read_list_lines(list_path, what, ConfigError), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if not min_columns <= len(fields) <= (max_columns or len(fields)) or not all(fields[:min_columns]):
            raise ConfigError(f"{list_path}:{number}: expected {layout} (TAB-separated), got {line.strip()[:200]!r}")
        rows.append((number, fields))
    if not rows:
        raise ConfigError(f"{what} {list_path} is empty")
    return rows


def _duration(list_path, number: int, text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"{list_path}:{number}: duration must be a number of seconds, finite and >= 0, got {text!r}")
    return seconds


def read_data_list(list_path) -> list:
    """A training list ``path<TAB>label[<TAB>seconds]`` (labels integers from 0):
    ``[(path, label, seconds or None), ...]``."""
    entries = []
    for number, fields in read_rows(list_path, "data list", "path<TAB>label[<TAB>duration_seconds]", 2, 3):
        try:
            label = int(fields[1])
        except ValueError:
            label = -1
        if label < 0:
            raise ConfigError(f"{list_path}:{number}: label must be an integer >= 0, got {fields[1]!r}")
        duration = _duration(list_path, number, fields[2]) if len(fields) == 3 else None
        entries.append((listed_path(list_path, fields[0]), label, duration))
    return entries


def read_labelled_list(list_path):
    """An evaluation list ``path<TAB>label[<TAB>seconds]`` (any label text):
    ``(paths, labels, durations)``, durations a dict path -> seconds of the rows that give one."""
    paths, labels, durations = [], [], {}
    for number, fields in read_rows(list_path, "list", "path<TAB>label[<TAB>duration]", 2, 3):
        audio = listed_path(list_path, fields[0])
        paths.append(audio)
        labels.append(fields[1])
        if len(fields) == 3:
            durations[audio] = _duration(list_path, number, fields[2])
    return paths, labels, durations


def read_speaker_list(list_path) -> list:
    """A corpus list ``path<TAB>speaker_id`` (the layout of every set in ``../shared/data``):
    ``[(path, speaker), ...]``."""
    return [(listed_path(list_path, path), speaker)
            for _, (path, speaker) in read_rows(list_path, "corpus list", "relative/path<TAB>speaker_id", 2, 2)]


def read_trials(list_path):
    """A trial list ``path1<TAB>path2<TAB>1|0``: ``(paths1, paths2, labels[bool])``."""
    paths1, paths2, labels = [], [], []
    for number, (first, second, label) in read_rows(list_path, "trials file", "path1<TAB>path2<TAB>1|0", 3, 3):
        if label.strip() not in ("0", "1"):
            raise ConfigError(f"{list_path}:{number}: trial label must be 1 (same speaker) or 0, got {label!r}")
        paths1.append(listed_path(list_path, first))
        paths2.append(listed_path(list_path, second))
        labels.append(label.strip() == "1")
    return paths1, paths2, np.array(labels, dtype=bool)


def read_path_list(list_path) -> list:
    """The audio paths of a list: the first column of each row, any further columns ignored."""
    return [listed_path(list_path, fields[0].strip())
            for _, fields in read_rows(list_path, "file list", "path[<TAB>...]", 1)]


def read_loss_file(list_path) -> dict:
    """``{audio path: loss}`` of a list written by ``write_loss_file``."""
    losses = {}
    for number, fields in read_rows(list_path, "loss file", "path<TAB>label<TAB>loss", 3, 3):
        try:
            loss = float(fields[2])
        except ValueError:
            loss = math.nan
        if not math.isfinite(loss):
            raise ConfigError(f"{list_path}:{number}: loss must be a finite number, got {fields[2]!r}")
        losses[listed_path(list_path, fields[0])] = loss
    return losses


def write_rows(list_path, rows) -> str:
    """Write ``rows`` (sequences of fields) as a TAB list, whole or not at all."""
    with atomic_file(list_path) as fh:
        fh.writelines("\t".join(str(field) for field in row) + "\n" for row in rows)
    return str(list_path)


def write_loss_file(rows, list_path) -> Path:
    """``rows`` of (path, label, loss) as a list ``path<TAB>label<TAB>loss``, in the order given."""
    write_rows(list_path, ((path, label, f"{loss:.6f}") for path, label, loss in rows))
    return Path(list_path)
