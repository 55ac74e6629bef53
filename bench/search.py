"""Top-1 voiceprint search latency through VoiceprintDB.search, for 10k, 100k and 1M users.

    python bench/search.py [--sizes 10000 100000 1000000] [--dim 192] [--repeats 21]

Prints one line per size, ``search_top1_<n> <median> ms`` (median of --repeats searches, each a
fresh random query). Targets on the 2-core development CPU: 100k under 5 ms, 1M under 50 ms; the
search is one float32 matrix-vector product, so it runs at the memory bandwidth the machine has.

Synthetic users are written straight into a fresh library's tables (one enrolment each, no audio:
the embedding is authoritative), then the library is reopened as users would, so the timed call
is the real search path: data_version check, query validation, matrix product, top-k.
"""
import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


from mvector.library.folder import DB_FILE
from mvector.library.store import VoiceprintDB

BULK_ROWS = 50_000


def fill_library(path: Path, users: int, dim: int, rng: np.random.Generator) -> None:
    """Bench-only fast path: bulk rows in one transaction instead of one register() per user."""
    VoiceprintDB(path, progress=False).close()  # creates the schema
    conn = sqlite3.connect(path / DB_FILE, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    for start in range(0, users, BULK_ROWS):
        ids = range(start + 1, min(users, start + BULK_ROWS) + 1)
        vectors = rng.standard_normal((len(ids), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        conn.executemany("INSERT INTO users (id, name, folder, created) VALUES (?, ?, ?, 0)",
                         ((i, f"user{i}", f"{i:032x}") for i in ids))
        conn.executemany("INSERT INTO enrolments (user_id, file, embedding, created) VALUES (?, ?, ?, 0)",
                         ((i, f"{i:032x}.flac", v.tobytes()) for i, v in zip(ids, vectors)))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('embd_dim', ?)", (str(dim),))
    conn.execute("COMMIT")
    conn.close()


def time_search(db: VoiceprintDB, dim: int, repeats: int, rng: np.random.Generator) -> float:
    queries = rng.standard_normal((repeats + 1, dim)).astype(np.float32)
    db.search(queries[0], top_k=1)  # warm-up: page in the matrix, start BLAS threads
    times = []
    for query in queries[1:]:
        start = time.perf_counter()
        db.search(query, top_k=1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def label(users: int) -> str:
    return f"{users // 1_000_000}M" if users % 1_000_000 == 0 else f"{users // 1000}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for users in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="mvector-search-bench-"))
        try:
            fill_library(folder, users, args.dim, rng)
            with VoiceprintDB(folder, progress=False) as db:
                assert len(db) == users
                seconds = time_search(db, args.dim, args.repeats, rng)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"search_top1_{label(users)} {seconds * 1000:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
