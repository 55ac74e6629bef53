"""VoiceprintDB: names, voiceprint arithmetic, durability under SIGKILL, erasure, sharing between
processes, following a model change, and search against brute force."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from disk_helpers import fill, mounted_small_disk
from mvector.errors import MVectorError
from mvector.library import index as search_index
from mvector.library.index import SearchIndex, exhaustive
from mvector.library.folder import DB_FILE, ERASING_PREFIX, QUARANTINE_DIR, TMP_PREFIX
from mvector.library.names import UserNameError, VoiceprintError
from mvector.library.store import VoiceprintDB

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
DIM = 16


def wave(rng, seconds=0.1):
    return (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def open_db(path, **kwargs):
    kwargs.setdefault("fingerprint", "model-a")
    kwargs.setdefault("progress", False)
    return VoiceprintDB(path, **kwargs)


def rows(path, sql, *args):
    conn = sqlite3.connect(Path(path) / DB_FILE)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def check_consistent(path):
    """Invariants any crash must preserve, then what opening the library must make true."""
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert rows(path, "PRAGMA foreign_key_check") == []
    assert rows(path, "SELECT COUNT(*) FROM users u WHERE NOT EXISTS "
                      "(SELECT 1 FROM enrolments e WHERE e.user_id = u.id)") == [(0,)]
    assert rows(path, "SELECT COUNT(*) FROM enrolments e WHERE NOT EXISTS "
                      "(SELECT 1 FROM users u WHERE u.id = e.user_id)") == [(0,)]
    with open_db(path) as db:
        users = dict(rows(path, "SELECT name, folder FROM users"))
        files = {(folder, file) for folder, file in rows(
            path, "SELECT u.folder, e.file FROM enrolments e JOIN users u ON u.id = e.user_id")}
        assert db.get_users() == sorted(users)
        on_disk = {(p.parent.name, p.name) for p in Path(path).glob("*/*")}
        assert on_disk == files  # no orphan file, and every committed enrolment has its audio
        assert {p.name for p in Path(path).iterdir() if p.is_dir()} == set(users.values())
        assert not list(Path(path).glob(TMP_PREFIX + "*"))
        return users


def test_unicode_and_case_distinct_names_and_reserved_looking_names(tmp_path):
    rng = np.random.default_rng(0)
    names = ["夜雨飘零", "Alice", "alice", "voiceprints.sqlite", ".lock", "Zoë Smith-O'Neil"]
    vectors = rng.standard_normal((len(names), DIM))
    with open_db(tmp_path) as db:
        for name, vector in zip(names, vectors):
            db.register(name, wave(rng), vector)
        assert db.get_users() == sorted(names)
        for name, vector in zip(names, vectors):
            best, score = db.search(vector, top_k=1)[0]
            assert best == name and score == pytest.approx(1.0, abs=1e-5)
    # Folders are internal ids: the library's own files are untouched by the names above.
    assert rows(tmp_path, "PRAGMA integrity_check") == [("ok",)]
    folders = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == len(names) and all(len(f) == 32 and int(f, 16) >= 0 for f in folders)


def test_names_are_nfc_normalised(tmp_path):
    rng = np.random.default_rng(1)
    composed, decomposed = "José", unicodedata.normalize("NFD", "José")
    assert composed != decomposed
    with open_db(tmp_path) as db:
        db.register(composed, wave(rng), rng.standard_normal(DIM))
        db.register(decomposed + "  ", wave(rng), rng.standard_normal(DIM))
        assert db.get_users() == [composed]
        assert rows(tmp_path, "SELECT COUNT(*) FROM enrolments") == [(2,)]
        assert db.remove_user(decomposed) is True
        assert db.get_users() == []


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "a\\b", "", "   ", "a\x00b", "tab\there",
                                  "line\nbreak", "x" * 129, ".", "..", 42, None])
def test_bad_names_are_refused_clearly(tmp_path, name):
    rng = np.random.default_rng(2)
    with open_db(tmp_path) as db:
        with pytest.raises(UserNameError, match="user name") as info:
            db.register(name, wave(rng), rng.standard_normal(DIM))
        assert isinstance(info.value, (VoiceprintError, MVectorError))
        with pytest.raises(UserNameError):
            db.remove_user(name)
        assert db.get_users() == []
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def test_longest_allowed_name(tmp_path):
    rng = np.random.default_rng(3)
    with open_db(tmp_path) as db:
        db.register("名" * 128, wave(rng), rng.standard_normal(DIM))
        assert db.get_users() == ["名" * 128]


def test_voiceprint_is_renormalised_mean_of_normalised_enrolments(tmp_path):
    rng = np.random.default_rng(4)
    # Very different norms: a plain mean would be dominated by the longest vector.
    enrolments = rng.standard_normal((3, DIM)) * np.array([[0.01], [1.0], [100.0]])
    expected = unit(unit(enrolments).mean(axis=0))
    query = rng.standard_normal(DIM)
    with open_db(tmp_path) as db:
        for e in enrolments:
            db.register("carol", wave(rng), e)
        db.register("dave", wave(rng), rng.standard_normal(DIM))
        scores = dict(db.search(query, top_k=2))
    assert scores["carol"] == pytest.approx(float(unit(query) @ expected), abs=1e-5)
    with open_db(tmp_path) as db:  # rebuilt from the database, same voiceprint
        assert dict(db.search(query, top_k=2))["carol"] == pytest.approx(scores["carol"], abs=1e-6)
        assert db.search(expected, top_k=1)[0] == ("carol", pytest.approx(1.0, abs=1e-5))


def test_library_survives_restart_with_audio_as_16bit_flac(tmp_path):
    rng = np.random.default_rng(5)
    waves = {name: wave(rng, 0.25) for name in ("ann", "bo")}
    vectors = {name: rng.standard_normal(DIM) for name in waves}
    with open_db(tmp_path) as db:
        for name in waves:
            db.register(name, waves[name], vectors[name])
        before = db.search(vectors["ann"], top_k=2)
    with open_db(tmp_path) as db:
        assert db.get_users() == ["ann", "bo"]
        assert db.search(vectors["ann"], top_k=2) == before
        assert len(db) == 2
    for name, folder, file in rows(tmp_path, "SELECT u.name, u.folder, e.file FROM users u "
                                             "JOIN enrolments e ON e.user_id = u.id"):
        info = sf.info(tmp_path / folder / file)
        assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_16", RATE)
        stored, _ = sf.read(tmp_path / folder / file, dtype="float32")
        np.testing.assert_allclose(stored, waves[name], atol=1.0 / 32768 + 1e-7)


def test_embedding_problems_are_voiceprint_errors(tmp_path):
    rng = np.random.default_rng(6)
    with open_db(tmp_path) as db:
        db.register("eve", wave(rng), rng.standard_normal(DIM))
        for bad, message in [(np.zeros(DIM), "all zeros"), (np.full(DIM, np.nan), "NaN"),
                             (np.ones((2, DIM)), "1-D"), (rng.standard_normal(DIM + 1), "dimensions")]:
            with pytest.raises(VoiceprintError, match=message):
                db.register("frank", wave(rng), bad)
        with pytest.raises(VoiceprintError, match="dimensions"):
            db.search(rng.standard_normal(DIM + 1))
        with pytest.raises(VoiceprintError, match="top_k"):
            db.search(rng.standard_normal(DIM), top_k=0)
        assert db.get_users() == ["eve"]
    # A failed registration leaves neither rows nor files.
    assert rows(tmp_path, "SELECT COUNT(*) FROM enrolments") == [(1,)]
    assert len(list(tmp_path.glob("*/*"))) == 1 and not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_not_a_database_is_a_clear_error(tmp_path):
    (tmp_path / DB_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(VoiceprintError, match="the database is damaged .* Restore it"):
        open_db(tmp_path)


def test_open_finishes_committed_renames_and_quarantines_what_the_database_does_not_know(tmp_path):
    rng = np.random.default_rng(7)
    with open_db(tmp_path) as db:
        db.register("gina", wave(rng), rng.standard_normal(DIM))
    folder, file = rows(tmp_path, "SELECT u.folder, e.file FROM enrolments e JOIN users u ON u.id = e.user_id")[0]
    # Killed after the commit, before the rename: the audio still has its temporary name.
    os.replace(tmp_path / folder / file, tmp_path / (TMP_PREFIX + file))
    (tmp_path / (TMP_PREFIX + "0" * 32 + ".flac")).write_bytes(b"uncommitted")  # killed before the commit
    (tmp_path / ("f" * 32)).mkdir()  # a user folder the database does not know
    (tmp_path / ("f" * 32) / ("1" * 32 + ".flac")).write_bytes(b"x")
    (tmp_path / folder / ("2" * 32 + ".flac")).write_bytes(b"no row")
    (tmp_path / "README.md").write_text("not ours")  # not a library name: left alone
    (tmp_path / "notes").mkdir()
    with pytest.warns(UserWarning, match=r"1 user folder\(s\) and 1 audio file\(s\) .* nothing was deleted"):
        with open_db(tmp_path) as db:
            assert db.get_users() == ["gina"]
    assert (tmp_path / folder / file).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".lock", DB_FILE, folder, "README.md", "notes", QUARANTINE_DIR] + [f".reserve-{i}" for i in range(4)])
    assert [p.name for p in (tmp_path / folder).iterdir()] == [file]
    quarantine = tmp_path / QUARANTINE_DIR
    assert (quarantine / ("f" * 32) / ("1" * 32 + ".flac")).read_bytes() == b"x"
    assert (quarantine / folder / ("2" * 32 + ".flac")).read_bytes() == b"no row"


def library_with_users(path, names, seed=0):
    rng = np.random.default_rng(seed)
    with open_db(path) as db:
        for name in names:
            db.register(name, wave(rng), rng.standard_normal(DIM))


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_lost_database_beside_stored_audio_is_an_error_that_deletes_nothing(tmp_path, damage):
    library_with_users(tmp_path, [f"user{i}" for i in range(5)])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.flac"))
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / (DB_FILE + suffix)).unlink(missing_ok=True)
    if damage == "emptied":
        (tmp_path / DB_FILE).write_bytes(b"")
    for _ in range(2):  # the error repeats: nothing was created in between
        with pytest.raises(VoiceprintError, match=r"voiceprints.sqlite (is missing|is empty).*5 user folder\(s\); "
                                                  r"nothing was changed. Restore"):
            open_db(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.flac")) == before
    assert not (tmp_path / DB_FILE).exists() or (tmp_path / DB_FILE).stat().st_size == 0


def test_an_older_backup_quarantines_newer_users_audio_which_returns_with_the_newer_database(tmp_path):
    import shutil

    library_with_users(tmp_path, ["ann", "bob"])
    backup = tmp_path.parent / "backup.sqlite"
    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute(f"VACUUM INTO '{backup}'")  # a consistent copy, as an operator's backup would be
    conn.close()
    library_with_users(tmp_path, ["cat", "dan"], seed=1)
    newer = tmp_path.parent / "newer.sqlite"
    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute(f"VACUUM INTO '{newer}'")
    conn.close()
    audio = sorted(p.read_bytes() for p in tmp_path.glob("*/*.flac"))
    for suffix in ("-wal", "-shm"):
        (tmp_path / (DB_FILE + suffix)).unlink(missing_ok=True)
    shutil.copy(backup, tmp_path / DB_FILE)  # the older backup restored
    with pytest.warns(UserWarning, match=r"2 user folder\(s\) and 0 audio file\(s\)"):
        with open_db(tmp_path) as db:
            assert db.get_users() == ["ann", "bob"]
    assert sorted(p.read_bytes() for p in tmp_path.rglob("*.flac")) == audio  # nothing lost
    shutil.copy(newer, tmp_path / DB_FILE)  # the newer database back: the audio returns by itself
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_db(tmp_path) as db:
            assert db.get_users() == ["ann", "bob", "cat", "dan"]
    assert not (tmp_path / QUARANTINE_DIR).exists()
    check_consistent(tmp_path)


def test_an_interrupted_erasure_is_finished_or_undone_by_what_the_database_says(tmp_path):
    library_with_users(tmp_path, ["eve", "fay"])
    folders = dict(rows(tmp_path, "SELECT name, folder FROM users"))
    # Killed between marking fay's folder and the commit: fay is still enrolled, her folder comes back.
    os.replace(tmp_path / folders["fay"], tmp_path / (ERASING_PREFIX + folders["fay"]))
    # Killed after eve's erasure committed, before her folder was deleted.
    conn = sqlite3.connect(tmp_path / DB_FILE)
    with conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM users WHERE name = 'eve'")
    conn.close()
    os.replace(tmp_path / folders["eve"], tmp_path / (ERASING_PREFIX + folders["eve"]))
    with open_db(tmp_path) as db:
        assert db.get_users() == ["fay"]
    assert (tmp_path / folders["fay"]).is_dir() and not (tmp_path / (ERASING_PREFIX + folders["fay"])).exists()
    assert not (tmp_path / (ERASING_PREFIX + folders["eve"])).exists() and not (tmp_path / folders["eve"]).exists()
    check_consistent(tmp_path)


def test_missing_audio_keeps_the_embedding(tmp_path):
    rng = np.random.default_rng(8)
    vector = rng.standard_normal(DIM)
    with open_db(tmp_path) as db:
        db.register("hal", wave(rng), vector)
    for p in tmp_path.glob("*/*"):
        p.unlink()
    with open_db(tmp_path) as db:
        assert db.search(vector, top_k=1)[0][0] == "hal"


KILL_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from mvector.library.store import VoiceprintDB
    rng = np.random.default_rng(int(sys.argv[3]))
    db = VoiceprintDB(sys.argv[2], fingerprint="model-a", progress=False)
    print("ready", flush=True)
    step = 0
    while True:
        step += 1
        name = f"user{int(rng.integers(12))}"
        if step % 5 == 0:
            db.remove_user(name)
        else:
            db.register(name, (0.1 * rng.standard_normal(1600)).astype(np.float32), rng.standard_normal(16))
""")


@pytest.mark.slow
def test_sigkill_mid_registration_leaves_library_consistent(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(KILL_CHILD)
    library = tmp_path / "lib"
    rng = np.random.default_rng(9)
    for round_ in range(4):
        child = subprocess.Popen([sys.executable, str(script), str(ROOT), str(library), str(round_)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(float(rng.uniform(0.05, 0.4)))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert child.returncode == -signal.SIGKILL
        check_consistent(library)
    assert rows(library, "SELECT COUNT(*) FROM enrolments")[0][0] > 0


def test_remove_user_erases_rows_files_and_bytes(tmp_path):
    rng = np.random.default_rng(10)
    kept = rng.standard_normal(DIM)
    erased = [rng.standard_normal(DIM) for _ in range(2)]
    db = open_db(tmp_path)
    reader = open_db(tmp_path)  # a second connection open at the same time
    db.register("ivan", wave(rng), kept)
    for e in erased:
        db.register("judy", wave(rng), e)
    judy_folder = rows(tmp_path, "SELECT folder FROM users WHERE name = 'judy'")[0][0]

    def stored_bytes():
        return b"".join(p.read_bytes() for p in tmp_path.glob(DB_FILE + "*") if p.is_file())

    needles = [blob for (blob,) in rows(tmp_path, "SELECT e.embedding FROM enrolments e JOIN users u "
                                                  "ON u.id = e.user_id WHERE u.name = 'judy'")]
    assert len(needles) == 2
    kept_bytes = rows(tmp_path, "SELECT embedding FROM enrolments")[0][0]
    assert all(n in stored_bytes() for n in needles)  # the check below can see them
    assert reader.get_users() == ["ivan", "judy"]

    assert db.remove_user("judy") is True
    assert db.remove_user("judy") is False
    assert db.get_users() == reader.get_users() == ["ivan"]
    assert rows(tmp_path, "SELECT COUNT(*) FROM enrolments") == [(1,)]
    assert not (tmp_path / judy_folder).exists()
    data = stored_bytes()
    assert not any(n in data for n in needles)
    assert "judy".encode() not in data
    assert kept_bytes in data
    # This Python's SQLite may default to secure_delete already; the library must not rely on it.
    assert db._conn.execute("PRAGMA secure_delete").fetchone() == (1,)
    db.close()
    reader.close()


TWO_PROCESS_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from mvector.library.store import VoiceprintDB
    with VoiceprintDB(sys.argv[2], fingerprint="model-a", progress=False) as db:
        print(",".join(db.get_users()), flush=True)
        sys.stdin.readline()  # the parent registers kim meanwhile
        print(",".join(db.get_users()), flush=True)
        db.register("bob", np.full(1600, 0.1, np.float32), np.eye(16)[3])
        print("done", flush=True)
        sys.stdin.readline()
""")


def test_two_processes_see_each_others_changes(tmp_path):
    rng = np.random.default_rng(11)
    script = tmp_path / "child.py"
    script.write_text(TWO_PROCESS_CHILD)
    library = tmp_path / "lib"
    with open_db(library) as db:
        db.register("alice", wave(rng), rng.standard_normal(DIM))
        child = subprocess.Popen([sys.executable, str(script), str(ROOT), str(library)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "alice"
            db.register("kim", wave(rng), rng.standard_normal(DIM))
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "alice,kim"
            assert child.stdout.readline().strip() == "done"
            assert db.get_users() == ["alice", "bob", "kim"]
            assert db.search(np.eye(DIM)[3], top_k=1)[0] == ("bob", pytest.approx(1.0))
            child.stdin.write("\n")
            child.stdin.flush()
        finally:
            assert child.wait(timeout=60) == 0


def spectral_embed(waves):
    """A deterministic stand-in for a model: log band energies of the first 4096 samples."""
    out = []
    for w in waves:
        spectrum = np.abs(np.fft.rfft(w[:4096], 4096)) ** 2
        out.append(np.log(np.add.reduceat(spectrum[1:], np.arange(0, 2048, 2048 // DIM)) + 1e-6))
    return np.stack(out)


def test_model_change_reembeds_stored_audio_in_one_transaction(tmp_path, capsys):
    rng = np.random.default_rng(12)
    waves = {name: wave(rng, 0.3) for name in ("lea", "max", "ned")}
    with open_db(tmp_path, fingerprint="model-a") as db:
        for name, w in waves.items():
            db.register(name, w, rng.standard_normal(DIM))
        db.register("lea", waves["max"][::-1].copy(), rng.standard_normal(DIM))

    with pytest.raises(VoiceprintError, match="embed_fn"):
        open_db(tmp_path, fingerprint="model-b")

    def failing(batch):
        raise RuntimeError("model crashed")
    with pytest.raises(RuntimeError):
        open_db(tmp_path, fingerprint="model-b", embed_fn=failing)
    assert rows(tmp_path, "SELECT value FROM meta WHERE key = 'fingerprint'") == [("model-a",)]

    calls = []

    def embed(batch):
        assert all(w.dtype == np.float32 and w.ndim == 1 for w in batch)
        calls.append(len(batch))
        return spectral_embed(batch)
    with open_db(tmp_path, fingerprint="model-b", embed_fn=embed, progress=True) as db:
        assert sum(calls) == 4
        assert "re-embedding" in capsys.readouterr().err
        for name in ("max", "ned"):
            best, score = db.search(spectral_embed([waves[name]])[0], top_k=1)[0]
            assert best == name and score == pytest.approx(1.0, abs=1e-3)
        lea = unit(unit(spectral_embed([waves["lea"], waves["max"][::-1]])).mean(axis=0))
        assert db.search(lea, top_k=1)[0] == ("lea", pytest.approx(1.0, abs=1e-3))
    assert rows(tmp_path, "SELECT value FROM meta WHERE key = 'fingerprint'") == [("model-b",)]
    with open_db(tmp_path, fingerprint="model-b", embed_fn=embed):
        assert sum(calls) == 4  # same model: nothing re-embedded

    for p in tmp_path.glob("*/*"):  # audio lost: the new model cannot re-embed these users
        p.unlink()
    with pytest.raises(VoiceprintError, match="'lea', 'max', 'ned'"):
        open_db(tmp_path, fingerprint="model-c", embed_fn=embed)


def test_search_and_recognition_match_brute_force(tmp_path):
    rng = np.random.default_rng(13)
    names = [f"speaker{i:02d}" for i in range(40)]
    enrolments = {name: rng.standard_normal((int(rng.integers(1, 4)), DIM)) for name in names}
    voiceprints = np.stack([unit(unit(enrolments[n]).mean(axis=0)) for n in names])
    with open_db(tmp_path) as db:
        assert db.search(rng.standard_normal(DIM)) == []
        assert db.recognition(rng.standard_normal(DIM), 0.5) == (None, None)
        for name in names:
            for e in enrolments[name]:
                db.register(name, wave(rng, 0.05), e)
        for _ in range(20):
            query = rng.standard_normal(DIM)
            scores = voiceprints @ unit(query)
            order = np.argsort(-scores)
            got = db.search(query, top_k=5)
            assert [n for n, _ in got] == [names[i] for i in order[:5]]
            np.testing.assert_allclose([s for _, s in got], scores[order[:5]], atol=1e-5)
            best = scores[order[0]]
            assert db.recognition(query, best - 1e-4) == (names[order[0]], pytest.approx(best, abs=1e-5))
            assert db.recognition(query, best + 1e-4) == (None, pytest.approx(best, abs=1e-5))
        assert len(db.search(rng.standard_normal(DIM), top_k=100)) == 40


def test_exhaustive_search_against_full_sort():
    rng = np.random.default_rng(14)
    matrix = unit(rng.standard_normal((1000, 32))).astype(np.float32)
    query = unit(rng.standard_normal(32)).astype(np.float32)
    scores = matrix.astype(np.float64) @ query.astype(np.float64)
    for k in (1, 7, 1000, 2000):
        rows_, got = exhaustive(matrix, query, k)
        np.testing.assert_array_equal(rows_, np.argsort(-scores)[:k])
        np.testing.assert_allclose(got, scores[rows_], atol=1e-6)


@pytest.mark.skipif(search_index.faiss is None, reason="faiss is not installed: large searches stay exhaustive")
def test_large_library_search_is_exact_through_appends_and_changes():
    rng = np.random.default_rng(15)
    count = search_index.FAISS_MIN_ROWS + 500
    matrix = unit(rng.standard_normal((count + 10, 64))).astype(np.float32)
    index = SearchIndex()

    def check(n):
        for _ in range(20):
            query = unit(matrix[rng.integers(n)] + 0.3 * rng.standard_normal(64)).astype(np.float32)
            rows_, got = index.search(matrix, n, query, 5)
            want = np.argsort(-(matrix[:n] @ query))[:5]
            np.testing.assert_array_equal(rows_, want)
            np.testing.assert_allclose(got, matrix[want] @ query, atol=1e-6)

    check(count)
    index.appended(matrix, count)  # a new user: the fp16 copy grows without a rebuild
    check(count + 1)
    matrix[3] = matrix[count]  # an existing voiceprint changes: the copy must be rebuilt
    index.changed()
    check(count + 1)


def test_scores_are_cosines_even_where_float32_rounding_passes_one(tmp_path):
    vector = np.full(DIM, 1.0 / np.sqrt(DIM), dtype=np.float32) * np.float32(1.0000001)
    with open_db(tmp_path) as db:
        db.register("ivy", wave(np.random.default_rng(9)), vector)
        name, score = db.recognition(vector, threshold=0.5)
        assert name == "ivy" and -1.0 <= score <= 1.0
        assert all(-1.0 <= s <= 1.0 for _, s in db.search(vector))


def test_new_names_that_print_like_another_are_refused_and_old_ones_can_still_be_erased(tmp_path):
    rng = np.random.default_rng(10)
    with open_db(tmp_path) as db:
        db.register("Alice", wave(rng), rng.standard_normal(DIM))
        for lookalike, problem in (("Alice\u200b", "invisible or text-direction character"),
                                   ("\u202eecilA", r"U\+202E"),
                                   ("\u0410lice", "mixes Cyrillic and Latin letters"),
                                   ("\u03a9mega Bob", "mixes Greek and Latin letters")):
            with pytest.raises(UserNameError, match=problem):
                db.register(lookalike, wave(rng), rng.standard_normal(DIM))
        for fine in ("\u0410\u043b\u0438\u0441\u0430", "\u674eLee", "Zo\u00eb"):  # one script, or CJK beside Latin
            db.register(fine, wave(rng), rng.standard_normal(DIM))
        assert db.get_users() == sorted(["Alice", "\u0410\u043b\u0438\u0441\u0430", "\u674eLee", "Zo\u00eb"])
        assert len(list(tmp_path.glob("*/*.flac"))) == 4  # the refused ones left nothing behind
    # A name registered before these checks existed can still be found and erased.
    conn = sqlite3.connect(tmp_path / DB_FILE)
    with conn:
        conn.execute("UPDATE users SET name = 'Bob\u200b' WHERE name = 'Alice'")
    conn.close()
    with open_db(tmp_path) as db:
        assert db.remove_user("Bob\u200b") and "Bob\u200b" not in db.get_users()


@pytest.fixture
def small_disk(tmp_path):
    with mounted_small_disk(tmp_path / "disk") as mount:
        yield mount


def test_on_a_full_disk_users_can_still_be_erased_and_writes_fail_clearly(small_disk):
    from mvector.library.names import VoiceprintStorageError

    library = small_disk / "db"
    rng = np.random.default_rng(11)
    with open_db(library) as db:
        for name in ("kim", "lou", "max"):
            db.register(name, wave(rng, seconds=1.0), rng.standard_normal(DIM))
    assert len(list(library.glob(".reserve-*"))) == 4
    fill(small_disk)
    with open_db(library) as db:  # opening may take a chunk of the reserve
        fill(small_disk)
        with pytest.raises(VoiceprintStorageError, match="the disk is full"):
            db.register("ned", wave(rng, seconds=1.0), rng.standard_normal(DIM))
        assert db.remove_user("kim")  # erasure on a full disk: the reserve makes room
        assert db.get_users() == ["lou", "max"]
    with open_db(library) as db:
        assert db.get_users() == ["lou", "max"]
        assert db.remove_user("lou")  # and again: the erased audio freed room for it
    assert rows(library, "SELECT name FROM users") == [("max",)]


def test_a_damaged_page_is_one_clear_error_and_nothing_is_changed(tmp_path):
    rng = np.random.default_rng(11)
    with open_db(tmp_path) as db:
        for name in ("ann", "ben", "cal"):
            db.register(name, wave(rng), rng.standard_normal(DIM))
    database = tmp_path / DB_FILE
    page_size = rows(tmp_path, "PRAGMA page_size")[0][0]
    data = bytearray(database.read_bytes())
    assert len(data) >= 3 * page_size
    data[page_size: 3 * page_size] = b"\xa5" * (2 * page_size)  # the pages after the header's
    database.write_bytes(bytes(data))

    def stored():  # SQLite's own -wal and -shm files come and go with connections
        return sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.name.endswith(("-wal", "-shm")))

    before = stored()
    with pytest.raises(VoiceprintError, match=r"voiceprints.sqlite: the database is damaged .*Restore it .*\.recover"):
        open_db(tmp_path)
    assert stored() == before  # no audio moved or deleted


@pytest.fixture
def read_only_mount(tmp_path):
    """A tmpfs folder that ``remount_read_only()`` turns read-only (needs root and mount; skips otherwise)."""
    import subprocess

    folder = tmp_path / "mount"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "none", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("making a read-only mount needs root and mount(8)")

    def remount_read_only():
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    yield folder, remount_read_only
    subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_library_on_a_read_only_mount_lists_and_recognises(read_only_mount):
    folder, remount_read_only = read_only_mount
    library = folder / "audio_db"
    rng = np.random.default_rng(12)
    vectors = {name: rng.standard_normal(DIM) for name in ("dora", "eli")}
    with open_db(library) as db:
        for name, vector in vectors.items():
            db.register(name, wave(rng), vector)
    remount_read_only()
    with open_db(library) as db:
        assert db.read_only and db.get_users() == ["dora", "eli"]
        assert db.recognition(vectors["eli"], 0.9)[0] == "eli"
        with pytest.raises(VoiceprintError, match="is read-only .* registering 'fay' is not possible"):
            db.register("fay", wave(rng), rng.standard_normal(DIM))
        with pytest.raises(VoiceprintError, match="is read-only .* removing 'dora' is not possible"):
            db.remove_user("dora")
    with pytest.raises(VoiceprintError, match="cannot be written and its voiceprints were made by model model-a"):
        open_db(library, fingerprint="model-b")
    with pytest.raises(VoiceprintError, match="cannot be written and holds no voiceprints.sqlite"):
        open_db(folder)
