"""The voiceprint library's two stores side by side, and recognitions per second through one and
two server replicas sharing PostgreSQL.

    python bench/library.py [--sizes 100000 1000000] [--dim 192] [--seconds 10] [--clients 8]

Needs PostgreSQL's server programs (a throwaway cluster is started in a temporary folder, as the
tests do) and psycopg. Per store (``sqlite``, ``postgres``) and size, with embeddings-only rows
(one enrolment per user, no audio, written in bulk), one line each ``<store> <users> <metric> <value>``:
  startup_s        opening the library: schema checks and loading every voiceprint into memory
  resync_s         reloading every voiceprint, as a replica does after a lost connection (postgres)
  enrol_ms / erase_ms / search_ms   median latency of one registration (1 s of audio), one
                   erasure and one top-1 search
Then ``replicas <n> recognitions_per_s <value>``: /recognize answered per second by n replicas of
infer_server.py (default model, 3 s recordings, --clients concurrent clients spread over them).
On a 2-core machine two replicas share the same cores: the figure shows the cost of sharing one
library, not a speed-up.
"""
import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the throwaway PostgreSQL cluster the tests use

from postgres_helpers import PASSWORD, PostgresServer  # noqa: E402
from search import fill_library, label  # noqa: E402

from mvector.library.stores import open_library  # noqa: E402

BULK_ROWS = 50_000


def fill_postgres(server: PostgresServer, users: int, dim: int, rng) -> None:
    """Bench-only fast path: COPY the rows instead of one register() per user."""
    import psycopg

    server.reset()
    open_library(server.url, progress=False).close()  # creates the schema
    with psycopg.connect(server.url) as conn, conn.cursor() as cursor:
        for start in range(0, users, BULK_ROWS):
            ids = range(start + 1, min(users, start + BULK_ROWS) + 1)
            vectors = rng.standard_normal((len(ids), dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            with cursor.copy("COPY mvector_users (id, name, created) FROM STDIN") as copy:
                for i in ids:
                    copy.write_row((i, f"user{i}", 0.0))
            with cursor.copy("COPY mvector_enrolments (user_id, key, audio, sample_rate, embedding, created) "
                             "FROM STDIN") as copy:
                for i, vector in zip(ids, vectors):
                    copy.write_row((i, f"{i:032x}", b"", 16000, vector.tobytes(), 0.0))
        cursor.execute("SELECT setval('mvector_users_id_seq', %s)", (users,))
        cursor.execute("INSERT INTO mvector_meta VALUES ('embd_dim', %s) ON CONFLICT (key) DO UPDATE SET value = "
                       "EXCLUDED.value", (str(dim),))


def median_ms(action, repeats: int) -> float:
    times = []
    for index in range(repeats):
        started = time.perf_counter()
        action(index)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure_store(store: str, location, users: int, dim: int, rng) -> None:
    started = time.perf_counter()
    library = open_library(location, progress=False)
    startup = time.perf_counter() - started
    try:
        assert len(library) == users, (len(library), users)
        print(f"{store} {label(users)} startup_s {startup:.2f}", flush=True)
        if store == "postgres":
            started = time.perf_counter()
            library._resync()
            print(f"{store} {label(users)} resync_s {time.perf_counter() - started:.2f}", flush=True)
        wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
        vectors = rng.standard_normal((20, dim)).astype(np.float32)
        enrol = median_ms(lambda i: library.register(f"bench{i}", wave, vectors[i]), 20)
        erase = median_ms(lambda i: library.remove_user(f"bench{i}"), 20)
        queries = rng.standard_normal((21, dim)).astype(np.float32)
        search = median_ms(lambda i: library.search(queries[i], top_k=1), 21)
        for metric, value in (("enrol_ms", enrol), ("erase_ms", erase), ("search_ms", search)):
            print(f"{store} {label(users)} {metric} {value:.2f}", flush=True)
    finally:
        library.close()


def recognitions_per_second(server: PostgresServer, replicas: int, seconds: float, clients: int, folder: Path) -> float:
    import httpx
    import soundfile as sf
    from server_helpers import ServerProcess

    from synthetic_voice import voice_like

    server.reset()
    audio = io.BytesIO()
    sf.write(audio, voice_like(3.0, 16000, seed=1), 16000, format="WAV", subtype="PCM_16")
    body = audio.getvalue()
    processes = [ServerProcess(["--audio_db_path", server.url], folder / f"replica{i}.log", api_key="bench-key",
                               env={"PGPASSWORD": PASSWORD}) for i in range(replicas)]
    for process in processes:
        process.start()
    try:
        httpx.post(processes[0].url + "/register", headers={"Authorization": "Bearer bench-key"},
                   files={"audio": ("v.wav", body)}, data={"name": "bench"}, timeout=60).raise_for_status()
        done, stop = [0], time.monotonic() + seconds
        lock = threading.Lock()

        def client(index):
            with httpx.Client(base_url=processes[index % replicas].url, timeout=60) as http:
                while time.monotonic() < stop:
                    http.post("/recognize", files={"audio": ("v.wav", body)}).raise_for_status()
                    with lock:
                        done[0] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return done[0] / (time.monotonic() - started)
    finally:
        for process in processes:
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--seconds", type=float, default=10.0, help="load per replica count")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    os.environ["PGPASSWORD"] = PASSWORD
    rng = np.random.default_rng(0)
    server = PostgresServer(durable=True).start()  # fsync on: latencies as a real deployment has them
    folder = Path(tempfile.mkdtemp(prefix="mvector-library-bench-"))
    try:
        for users in args.sizes:
            sqlite_folder = folder / f"sqlite{users}"
            fill_library(sqlite_folder, users, args.dim, rng)
            measure_store("sqlite", sqlite_folder, users, args.dim, rng)
            shutil.rmtree(sqlite_folder, ignore_errors=True)
            fill_postgres(server, users, args.dim, rng)
            measure_store("postgres", server.url, users, args.dim, rng)
        for replicas in (1, 2):
            rate = recognitions_per_second(server, replicas, args.seconds, args.clients, folder)
            print(f"replicas {replicas} recognitions_per_s {rate:.1f}", flush=True)
    finally:
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
