"""The inference workload as it crosses to a peer's interpreter, and the peer's timing of it.

Standard library and numpy only: the peer scripts (peer_infer.py, peer_resemblyzer.py) import it
from their own folder while running in the peers' venvs, where neither mvector nor torch is ours.
The workload is ``shape -> list of float32 arrays``, saved as one .npz with keys ``<shape>__<index>``.
"""
import statistics
import time

import numpy as np


def write_workload(path, workload: dict) -> None:
    np.savez(path, **{f"{shape}__{i}": wav for shape, batch in workload.items() for i, wav in enumerate(batch)})


def read_workload(path) -> dict:
    """``shape -> list of arrays`` in the order they were written."""
    audio = np.load(path)
    shapes = {}
    for key in audio.files:
        shape, index = key.rsplit("__", 1)
        shapes.setdefault(shape, []).append((int(index), audio[key]))
    return {shape: [wav for _, wav in sorted(items, key=lambda item: item[0])] for shape, items in shapes.items()}


def median_seconds(call, repeats: int) -> float:
    """Median wall time of ``call()`` over ``repeats`` calls (warm it up first)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
