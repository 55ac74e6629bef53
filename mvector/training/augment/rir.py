"""Room impulse responses: simulated shoebox rooms (pyroomacoustics), cached on disk once."""
from pathlib import Path

import numpy as np

from mvector import fileio
from mvector.fileio import atomic_file


# Simulated rooms: shoebox sizes (m) and reverberation times (s) of ordinary rooms. Image-source
# order is capped so one RIR costs well under a second; the late tail it cuts is weak anyway.
ROOM_MIN, ROOM_MAX = (3.0, 3.0, 2.5), (10.0, 8.0, 4.0)


RT60_RANGE = (0.2, 0.8)
MAX_IMAGE_ORDER = 30
# An RIR is cut where its remaining energy falls 60 dB below the total, and at 1 s at most.
RIR_TAIL_DB = 60.0
RIR_MAX_SECONDS = 1.0


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
    directory = Path(cache_dir) if cache_dir is not None else fileio.cache_dir()
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
