"""Two server replicas (``infer_server.py`` processes) sharing one voiceprint library on a real
PostgreSQL: enrolled through one, recognised by the other within a second; erased everywhere;
concurrent clients while others register and remove; the database restarted mid-load."""
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import soundfile as sf

from postgres_helpers import PASSWORD, PostgresServer
from predict_helpers import coloured_noise, make_model_dir
from server_helpers import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("fastapi")
pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'mvector-sv[postgres]')")

KEY = "replica-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def voice(seed: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, coloured_noise(2.0, seed), 16000, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def replicas(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replicas")
    model = make_model_dir(folder / "model")
    env = {"PGPASSWORD": PASSWORD}
    servers = [ServerProcess(["--model_dir", model, "--audio_db_path", postgres.url], folder / f"replica{i}.log",
                             api_key=KEY, env=env) for i in range(2)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


def register(server, name, seed):
    return httpx.post(server.url + "/register", headers=AUTH, files={"audio": ("v.wav", voice(seed))},
                      data={"name": name}, timeout=60)


def recognized(server, seed):
    answer = httpx.post(server.url + "/recognize", files={"audio": ("v.wav", voice(seed))}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["name"]


def users(server):
    return httpx.get(server.url + "/users", timeout=30).json()["users"]


def until(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_enrolled_on_one_recognised_on_the_other_erased_everywhere(replicas, postgres):
    first, second = replicas
    assert register(first, "Ada", 101).status_code == 200
    started = time.monotonic()
    assert until(lambda: recognized(second, 101) == "Ada", 5)
    assert time.monotonic() - started < 1.5  # a recognition request itself takes a fraction of that
    assert httpx.delete(second.url + "/users/Ada", headers=AUTH, timeout=30).status_code == 200
    assert until(lambda: "Ada" not in users(first), 1.0)
    assert postgres.psql("SELECT count(*) FROM mvector_users WHERE name = 'Ada'").strip() == "0"


def test_concurrent_clients_while_others_register_and_remove(replicas, postgres):
    first, second = replicas
    names = [f"user{i}" for i in range(10)]
    with ThreadPoolExecutor(16) as pool:
        registrations = [pool.submit(register, replicas[i % 2], name, 200 + i) for i, name in enumerate(names)]
        recognitions = [pool.submit(recognized, replicas[i % 2], 200 + i % 10) for i in range(50)]
        assert all(f.result().status_code == 200 for f in registrations)
        for future in recognitions:
            future.result()  # 200 each (a user not yet enrolled is simply not recognised)
        removals = [pool.submit(httpx.delete, replicas[i % 2].url + f"/users/{name}", headers=AUTH, timeout=30)
                    for i, name in enumerate(names[:5])]
        assert all(f.result().status_code == 200 for f in removals)
    kept = sorted(names[5:])
    assert until(lambda: sorted(users(first)) == kept and sorted(users(second)) == kept, 3)
    for index in range(5, 10):
        assert recognized(second if index % 2 else first, 200 + index) == f"user{index}"
    assert postgres.psql("SELECT count(*) FROM mvector_users").strip() == "5"


def test_a_database_restart_mid_load(replicas, postgres):
    first, second = replicas
    assert register(first, "Bea", 301).status_code == 200
    postgres.stop()
    try:
        down = register(second, "Cy", 302)
        assert down.status_code == 503, down.text
        assert "cannot be reached" in down.json()["detail"] and PASSWORD not in down.text
        assert recognized(first, 301) == "Bea"  # recognition goes on from memory
    finally:
        postgres.start()
    assert until(lambda: register(second, "Cy", 302).status_code == 200, 20)
    assert until(lambda: recognized(first, 302) == "Cy", 10)
    # No half-enrolled user: every user has their enrolment, and each acknowledged one is there.
    assert postgres.psql("SELECT count(*) FROM mvector_users u WHERE NOT EXISTS "
                         "(SELECT 1 FROM mvector_enrolments e WHERE e.user_id = u.id)").strip() == "0"
    assert {"Bea", "Cy"} <= set(users(first)) and {"Bea", "Cy"} <= set(users(second))
    for server in replicas:
        assert PASSWORD not in server.log()
