"""The voiceprint library's behaviour on both stores, SQLite (a folder) and PostgreSQL (a real
server started for the tests), with the same tests; then what only a shared database server has:
replicas that follow each other, a database that goes away and comes back, the password kept out
of URLs and messages, and copying a library between the stores both ways."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from mvector.library.names import UserNameError, VoiceprintError, VoiceprintUnavailable
from mvector.library.stores import open_library
from postgres_helpers import PASSWORD, PostgresServer
from server_helpers import ROOT

pytestmark = pytest.mark.integration

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'mvector-sv[postgres]')")

DIM = 16
RATE = 16000


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    previous = os.environ.get("PGPASSWORD")
    os.environ["PGPASSWORD"] = PASSWORD  # libpq reads it; nothing else ever sees it
    yield server
    if previous is None:
        os.environ.pop("PGPASSWORD", None)
    else:
        os.environ["PGPASSWORD"] = previous
    server.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return tmp_path / "audio_db"
    server = request.getfixturevalue("postgres")
    server.reset()
    return server.url


def wave(rng, seconds=0.2):
    return (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


def histogram_embed(waves):
    """A deterministic stand-in model: a histogram of the samples (re-embedding must call it)."""
    return np.stack([np.histogram(w, bins=DIM, range=(-0.4, 0.4))[0] + 1.0 for w in waves]).astype(np.float32)


def open_store(location, **kwargs):
    kwargs.setdefault("fingerprint", "model-a")
    kwargs.setdefault("progress", False)
    return open_library(location, **kwargs)


def test_register_search_remove_and_reopen(location):
    rng = np.random.default_rng(0)
    vectors = {name: rng.standard_normal(DIM) for name in ("ana", "ben", "cai")}
    with open_store(location) as library:
        for name, vector in vectors.items():
            assert library.register(name, wave(rng), vector) is True
        library.register("ana", wave(rng), vectors["ana"] + 0.05 * rng.standard_normal(DIM))
        assert library.get_users() == ["ana", "ben", "cai"] and len(library) == 3
        assert library.recognition(vectors["ben"], 0.9)[0] == "ben"
        assert library.search(vectors["cai"], top_k=2)[0][0] == "cai"
        assert library.remove_user("ben") is True and library.remove_user("ben") is False
        assert library.counts() == (2, 3)
    with open_store(location) as library:  # durable
        assert library.get_users() == ["ana", "cai"]
        assert library.recognition(vectors["ben"], 0.9)[0] is None


def test_names_and_embeddings_are_checked_the_same_way(location):
    rng = np.random.default_rng(1)
    with open_store(location) as library:
        library.register("Alice", wave(rng), rng.standard_normal(DIM))
        for bad in ("", "a/b", "..", "x" * 200, "Alice\u200b", "\u0410lice"):
            with pytest.raises(UserNameError):
                library.register(bad, wave(rng), rng.standard_normal(DIM))
        with pytest.raises(VoiceprintError, match="dimensions"):
            library.register("bob", wave(rng), rng.standard_normal(DIM + 1))
        with pytest.raises(VoiceprintError, match="NaN"):
            library.register("bob", wave(rng), np.full(DIM, np.nan))
        with pytest.raises(VoiceprintError, match="top_k"):
            library.search(rng.standard_normal(DIM), top_k=0)
        assert library.get_users() == ["Alice"] and library.counts() == (1, 1)


def test_a_new_model_re_embeds_every_enrolment(location):
    rng = np.random.default_rng(2)
    recordings = {name: wave(rng) for name in ("dee", "eve")}
    with open_store(location) as library:
        for name, wav in recordings.items():
            library.register(name, wav, rng.standard_normal(DIM))
    with open_store(location, fingerprint="model-b", embed_fn=histogram_embed) as library:
        assert library.stored_fingerprint() == "model-b"
        query = histogram_embed([recordings["eve"]])[0]
        name, score = library.recognition(query, 0.99)
        assert name == "eve" and score > 0.999  # its voiceprint now comes from the new model
    with pytest.raises(VoiceprintError, match="needs embed_fn"):
        open_store(location, fingerprint="model-c")


def test_copying_twice_adds_nothing(location):
    rng = np.random.default_rng(3)
    with open_store(location) as library:
        assert library.register("fay", wave(rng), rng.standard_normal(DIM), key="a" * 32)
        assert not library.register("fay", wave(rng), rng.standard_normal(DIM), key="a" * 32)
        assert library.counts() == (1, 1)


# ----- what only PostgreSQL has -------------------------------------------------------------------


def test_a_password_in_the_url_is_refused_and_never_shown(postgres):
    leaky = postgres.url.replace("mvector@", "mvector:hunter2@")
    with pytest.raises(VoiceprintError, match="holds a password") as caught:
        open_store(leaky)
    assert "hunter2" not in str(caught.value)


def test_the_password_comes_from_a_pgpass_file_and_a_wrong_one_is_named_without_it(postgres, tmp_path, monkeypatch):
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres.port}:voiceprints:mvector:{PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    postgres.reset()
    with open_store(postgres.url) as library:
        assert library.get_users() == []
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    monkeypatch.delenv("PGPASSFILE")
    with pytest.raises(VoiceprintError) as caught:
        open_store(postgres.url)
    assert "not-the-password" not in str(caught.value) and "password authentication failed" in str(caught.value)


def wait_for(condition, seconds=3.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.02)
    return None


def test_replicas_follow_each_other_within_a_second(postgres):
    postgres.reset()
    rng = np.random.default_rng(4)
    vector = rng.standard_normal(DIM)
    with open_store(postgres.url) as first, open_store(postgres.url) as second:
        started = time.monotonic()
        first.register("gus", wave(rng), vector)
        seen = wait_for(lambda: second.recognition(vector, 0.9)[0] == "gus")
        assert seen is not None and seen - started < 1.0
        started = time.monotonic()
        second.remove_user("gus")
        gone = wait_for(lambda: first.get_users() == [])
        assert gone is not None and gone - started < 1.0


def test_a_database_restart_fails_changes_clearly_then_recovers(postgres):
    postgres.reset()
    rng = np.random.default_rng(5)
    vectors = {name: rng.standard_normal(DIM) for name in ("hal", "ida")}
    with open_store(postgres.url) as first, open_store(postgres.url) as second:
        first.register("hal", wave(rng), vectors["hal"])
        postgres.stop()
        try:
            with pytest.raises(VoiceprintUnavailable, match="cannot be reached while registering 'ida'"):
                first.register("ida", wave(rng), vectors["ida"])
            assert first.recognition(vectors["hal"], 0.9)[0] == "hal"  # searches are served from memory
        finally:
            postgres.start()
        assert wait_for(lambda: _registers(first, "ida", wave(rng), vectors["ida"]), seconds=15)
        # The other replica lost its listening connection too: it reconnects and reloads.
        assert wait_for(lambda: second.get_users() == ["hal", "ida"], seconds=15)
        assert first.counts() == (2, 2)


def _registers(library, name, wav, vector) -> bool:
    try:
        return library.register(name, wav, vector)
    except VoiceprintUnavailable:
        return False


def test_copy_both_ways_from_the_command_line(postgres, tmp_path):
    postgres.reset()
    rng = np.random.default_rng(6)
    vectors = {name: rng.standard_normal(DIM) for name in ("jo", "kim", "lee")}
    with open_store(tmp_path / "first") as library:
        for name, vector in vectors.items():
            library.register(name, wave(rng), vector)
            library.register(name, wave(rng), vector + 0.01 * rng.standard_normal(DIM))

    def copy(source, target):
        done = subprocess.run([sys.executable, "-m", "mvector.library", "copy", "--from", str(source), "--to", str(target)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "3 users, 6 enrolments (6 new)" in copy(tmp_path / "first", postgres.url)
    assert "(0 new)" in copy(tmp_path / "first", postgres.url)  # idempotent
    assert "3 users, 6 enrolments (6 new)" in copy(postgres.url, tmp_path / "back")
    with open_store(tmp_path / "back") as back, open_store(postgres.url) as shared:
        assert back.get_users() == shared.get_users() == ["jo", "kim", "lee"]
        assert back.counts() == shared.counts() == (3, 6) and back.stored_fingerprint() == "model-a"
        for name, vector in vectors.items():
            assert back.recognition(vector, 0.9)[0] == shared.recognition(vector, 0.9)[0] == name


def test_the_recognition_script_uses_a_postgres_library(postgres, tmp_path):
    from predict_helpers import coloured_noise, make_model_dir, write_wav

    postgres.reset()
    model = make_model_dir(tmp_path / "model")
    alice = write_wav(tmp_path / "alice.wav", coloured_noise(2.0, 41))

    def run(*args):
        done = subprocess.run([sys.executable, "infer_recognition.py", "--model_dir", str(model), "--audio_db_path",
                               postgres.url, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("--register", "alice", "--audio", alice)
    assert run("--list") == "alice\n"
    assert "alice" in run("--recognize", "--audio", alice)
