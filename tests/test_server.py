"""The voiceprint HTTP service, run as a real process (``infer_server.py``) on a free loopback port
and spoken to over HTTP: every endpoint, authentication, the safety limits, concurrent load with
micro-batching, and persistence across a restart. A tiny random TDNN stands in for a trained
model, real dev utterances for speakers."""
import asyncio
import io
import signal
import subprocess
import sys

import httpx
import numpy as np
import pytest
import soundfile as sf

from predict_helpers import dev_files, live_webm, make_model_dir
from server_helpers import ROOT, ServerProcess, free_port

pytestmark = pytest.mark.integration

pytest.importorskip("fastapi")

KEY = "test-key-0123456789"
MAX_UPLOAD_MB = 1
MAX_AUDIO_SECONDS = 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    points = {"eer": {"threshold": 0.5, "far": 0.05, "frr": 0.05},
              "far=0.001": {"threshold": 0.8, "far": 0.001, "frr": 0.4}}
    return make_model_dir(tmp_path_factory.mktemp("server_model") / "tiny_tdnn",
                          state={"threshold": 0.5, "operating_points": points})


@pytest.fixture(scope="module")
def utterances():
    """Bytes of real recordings: different speakers first."""
    return [open(path, "rb").read() for path in dev_files(8)]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(["--model_dir", model_dir, "--audio_db_path", folder / "db",
                        "--max_upload_mb", MAX_UPLOAD_MB, "--max_audio_seconds", MAX_AUDIO_SECONDS],
                       folder / "server.log", api_key=KEY) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


AUTH = {"Authorization": f"Bearer {KEY}"}


def flac(data: bytes, name="speech.flac"):
    return (name, data, "audio/flac")


def assert_clean_error(response, status, *words):
    """A JSON error with our message, never a traceback."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    for word in words:
        assert word in str(detail), detail


@pytest.mark.slow
def test_health_docs_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["threshold"] == 0.5 and health["embedding_size"] == 32
    assert health["operating_points"] == {"eer": 0.5, "far=0.001": 0.8}
    assert health["max_upload_mb"] == MAX_UPLOAD_MB and health["accepts_changes"] is True
    schema = client.get("/openapi.json").json()
    assert {"/register", "/recognize", "/contrast", "/diarize", "/users", "/users/{name}", "/health"} <= set(schema["paths"])
    # No pages that pull Swagger or ReDoc from a CDN onto this origin; the schema is served.
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "mvector voiceprint service"
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "getUserMedia" in client.get("/static/app.js").text


@pytest.mark.data
def test_register_recognize_contrast_list_remove(client, utterances):
    first, second = utterances[0], utterances[1]
    answer = client.post("/register", headers=AUTH, files={"audio": flac(first)}, data={"name": "  Émile "})
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == "Émile" and answer.json()["seconds"] > 0.3  # NFC, stripped
    assert client.post("/register", headers=AUTH, files={"audio": flac(second)},
                       data={"name": "other"}).status_code == 200
    assert {"Émile", "other"} <= set(client.get("/users").json()["users"])

    found = client.post("/recognize", files={"audio": flac(first)}).json()
    assert found["name"] == "Émile" and found["recognized"] is True
    assert found["score"] == pytest.approx(1.0, abs=1e-4) and found["threshold"] == 0.5
    strict = client.post("/recognize", files={"audio": flac(second)}, data={"threshold": "1.0"}).json()
    assert strict["threshold"] == 1.0 and strict["score"] < 1.0 + 1e-6
    assert strict["recognized"] is (strict["score"] >= 1.0)
    assert client.post("/recognize", files={"audio": flac(first)}, data={"threshold": "2"}).status_code == 422
    named = client.post("/recognize", files={"audio": flac(second)}, data={"threshold": "far=0.001"}).json()
    assert named["threshold"] == 0.8
    assert_clean_error(client.post("/contrast", files={"audio1": flac(first), "audio2": flac(second)},
                                   data={"threshold": "far=0.2"}), 422, "operating points: eer, far=0.001")

    same = client.post("/contrast", files={"audio1": flac(first), "audio2": flac(first)}).json()
    assert same == {"score": pytest.approx(1.0, abs=1e-4), "threshold": 0.5, "same_speaker": True}
    pair = client.post("/contrast", files={"audio1": flac(first), "audio2": flac(second)}).json()
    assert -1.0 <= pair["score"] < same["score"] and pair["same_speaker"] is (pair["score"] >= 0.5)

    assert client.delete("/users/other", headers=AUTH).json() == {"removed": "other"}
    assert "other" not in client.get("/users").json()["users"]
    assert_clean_error(client.delete("/users/other", headers=AUTH), 404, "other")


@pytest.mark.data
def test_changes_need_the_key(client, utterances):
    files = {"audio": flac(utterances[0])}
    missing = client.post("/register", files=files, data={"name": "mallory"})
    assert_clean_error(missing, 401, "missing API key")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/register", headers={"Authorization": "Bearer not-the-key"}, files=files,
                        data={"name": "mallory"})
    assert_clean_error(wrong, 401, "wrong API key")
    assert_clean_error(client.post("/register", headers={"Authorization": KEY}, files=files,
                                   data={"name": "mallory"}), 401, "missing API key")  # no Bearer scheme
    assert_clean_error(client.delete("/users/Émile"), 401)
    assert_clean_error(client.delete("/users/Émile", headers={"Authorization": "Bearer x"}), 401)
    assert "mallory" not in client.get("/users").json()["users"]  # reads are open on loopback


def test_refuses_to_listen_beyond_loopback_without_a_key(model_dir, tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(ROOT / "infer_server.py"), "--host", "0.0.0.0",
                             "--port", str(free_port()), "--model_dir", str(model_dir),
                             "--audio_db_path", str(tmp_path / "db")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0 without an API key" in lines[0]
    assert not (tmp_path / "db").exists()  # refused before anything was opened


@pytest.mark.slow
def test_an_unknown_backend_is_one_line_and_nothing_is_opened(model_dir, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "infer_server.py"), "--port", str(free_port()),
                             "--model_dir", str(model_dir), "--audio_db_path", str(tmp_path / "db"),
                             "--backend", "tensorrt"],
                            cwd=ROOT, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown inference backend 'tensorrt'" in lines[0] and "openvino" in lines[0]
    assert not (tmp_path / "db").exists()


def test_a_port_out_of_range_or_busy_is_one_line_before_the_model_loads(tmp_path, capsys):
    import socket

    from mvector.apps.server.serve import serve

    assert serve(port=99999, model_dir=tmp_path / "no_model", audio_db_path=tmp_path / "db") == 2
    assert capsys.readouterr().err == "error: --port must be at most 65535, got 99999\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve(port=port, model_dir=tmp_path / "no_model", audio_db_path=tmp_path / "db") == 2
    assert capsys.readouterr().err == (f"error: cannot listen on 127.0.0.1:{port}: another program is using that "
                                       f"port; stop it or choose another --port\n")
    assert not (tmp_path / "db").exists()


@pytest.mark.data
def test_bad_uploads(client, utterances):
    def register(content, name="carol", filename="x.wav"):
        return client.post("/register", headers=AUTH, files={"audio": (filename, content)}, data={"name": name})

    assert_clean_error(register(b""), 422, "empty")
    assert_clean_error(register(b"this is not audio at all " * 40, filename="notes.txt"), 422,
                       "upload 'notes.txt'", "not a readable audio file")
    silent = io.BytesIO()
    sf.write(silent, np.zeros(16000, np.float32), 16000, format="WAV")
    assert_clean_error(register(silent.getvalue()), 422, "silent")

    speech = np.concatenate([sf.read(io.BytesIO(u), dtype="float32")[0] for u in utterances])
    long_speech = np.tile(speech, int(np.ceil(1.2 * MAX_AUDIO_SECONDS * 16000 / len(speech))))
    assert len(long_speech) / 16000 > MAX_AUDIO_SECONDS
    too_long = io.BytesIO()
    sf.write(too_long, long_speech, 16000, format="FLAC")
    assert len(too_long.getvalue()) < MAX_UPLOAD_MB * 2**20
    assert_clean_error(register(too_long.getvalue()), 422, f"longer than this server accepts ({MAX_AUDIO_SECONDS} s)")
    # A stream whose container states no length is counted only up to the limit, never decoded whole.
    bomb = live_webm(3 * MAX_AUDIO_SECONDS)
    assert_clean_error(register(bomb), 422, f"longer than this server accepts ({MAX_AUDIO_SECONDS} s)")

    oversize = np.random.default_rng(0).bytes(int(1.5 * 2**20))
    assert_clean_error(register(oversize), 413, "upload too large", "1 MiB")
    # Without a Content-Length (chunked) the body is counted as it arrives.
    body = (b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="big.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + oversize + b"\r\n--xyz--\r\n")
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    chunked = client.post("/recognize", content=chunks,
                          headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert "content-length" not in chunked.request.headers
    assert_clean_error(chunked, 413, "upload too large")

    for name in ["   ", "a/b", "..", "x" * 200, "tab\there"]:
        assert_clean_error(register(utterances[0], name=name), 422, "user name")
    assert_clean_error(register(utterances[0], name=""), 422, "name")  # FastAPI: an empty field is missing
    # Bytes that are not UTF-8 are refused, not read as Latin-1 into another user's name.
    latin1 = (b'--xyz\r\nContent-Disposition: form-data; name="name"\r\n\r\ncaro\xe9l\r\n'
              b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a.flac"\r\n\r\n'
              + utterances[0] + b"\r\n--xyz--\r\n")
    assert_clean_error(client.post("/register", content=latin1, headers={
        **AUTH, "Content-Type": "multipart/form-data; boundary=xyz"}), 422, "form field 'name' is not valid UTF-8")
    assert_clean_error(client.delete("/users/%2E%2E", headers=AUTH), 422, "path component")
    missing_field = client.post("/recognize", data={"threshold": "0.5"})
    assert missing_field.status_code == 422 and "audio" in missing_field.text
    assert "carol" not in client.get("/users").json()["users"]


@pytest.mark.data
def test_concurrent_recognitions_while_registering(server, utterances):
    """50 recognitions and 6 registrations at once: every answer 200, every user kept, and the
    recognitions' embeddings computed in shared batches."""
    names = [f"speaker-{i}" for i in range(6)]

    async def burst():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            registrations = [http.post("/register", headers=AUTH, data={"name": name},
                                       files={"audio": flac(utterances[i % len(utterances)])})
                             for i, name in enumerate(names)]
            recognitions = [http.post("/recognize", files={"audio": flac(utterances[i % len(utterances)])})
                            for i in range(50)]
            return await asyncio.gather(*registrations, *recognitions)

    before = httpx.get(server.url + "/health").json()["batching"]
    answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers if a.status_code != 200]
    assert all(a.json()["threshold"] == 0.5 and a.json()["score"] is not None for a in answers[len(names):])
    assert set(names) <= set(httpx.get(server.url + "/users").json()["users"])
    after = httpx.get(server.url + "/health").json()["batching"]
    assert after["requests"] - before["requests"] == 56
    assert after["batches"] - before["batches"] < 56 and after["largest_batch"] > 1


@pytest.mark.slow
@pytest.mark.data
def test_users_survive_a_restart_and_keyless_loopback_is_read_only(model_dir, utterances, tmp_path):
    db = tmp_path / "db"
    key_file = tmp_path / "key.txt"
    key_file.write_text("file-key-abc\n")
    args = ["--model_dir", model_dir, "--audio_db_path", db]
    first = ServerProcess([*args, "--api_key_file", key_file], tmp_path / "first.log")
    first.headers = {"Authorization": "Bearer file-key-abc"}
    with first:
        for name, audio in zip(["ann", "ben"], utterances):
            answer = httpx.post(first.url + "/register", headers=first.headers, data={"name": name},
                                files={"audio": flac(audio)}, timeout=30)
            assert answer.status_code == 200, answer.text
    assert first.process.returncode in (0, -signal.SIGTERM)  # uvicorn ends by the signal it handled
    assert "Application shutdown complete" in first.log()

    with ServerProcess(args, tmp_path / "second.log") as second:  # no key at all
        assert httpx.get(second.url + "/users").json() == {"users": ["ann", "ben"], "count": 2}
        found = httpx.post(second.url + "/recognize", files={"audio": flac(utterances[1])}, timeout=30).json()
        assert found["name"] == "ben"
        refused = httpx.post(second.url + "/register", files={"audio": flac(utterances[2])},
                             data={"name": "eve"}, headers={"Authorization": "Bearer anything"}, timeout=30)
        assert_clean_error(refused, 403, "no API key")
        assert httpx.get(second.url + "/health").json()["accepts_changes"] is False
    assert "no API key set" in second.log()


# ---- in-process: the app factory and the micro-batcher -------------------------------------------

def asgi_client(app, raise_app_exceptions=False):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost")


@pytest.fixture
def app_parts(model_dir, tmp_path):
    from mvector.inference.predictor import MVectorPredictor
    from mvector.library.store import VoiceprintDB

    predictor = MVectorPredictor(model_dir=model_dir, audio_db_path=tmp_path / "db")
    library = VoiceprintDB(tmp_path / "db", fingerprint=predictor.fingerprint(), progress=False)
    yield predictor, library
    library.close()


@pytest.mark.data
def test_beyond_loopback_every_api_call_needs_the_key(app_parts, utterances):
    from mvector.apps.server.app import create_app

    app = create_app(*app_parts, api_key=KEY, require_key_for_reads=True, allowed_hosts=None)

    async def calls():
        async with asgi_client(app) as http:
            audio = {"audio": flac(utterances[0])}
            anonymous = [await http.get("/users"), await http.get("/health"),
                         await http.post("/recognize", files=audio),
                         await http.post("/contrast", files={"audio1": flac(utterances[0]),
                                                             "audio2": flac(utterances[1])}),
                         await http.post("/diarize", files=audio)]
            keyed = [await http.get("/users", headers=AUTH), await http.post("/recognize", headers=AUTH, files=audio)]
            public = [await http.get("/"), await http.get("/openapi.json")]
            return anonymous, keyed, public

    anonymous, keyed, public = asyncio.run(calls())
    assert [r.status_code for r in anonymous] == [401] * 5
    assert [r.status_code for r in keyed] == [200, 200]
    assert keyed[1].json() == {"name": None, "score": None, "threshold": 0.5, "recognized": False}  # nobody enrolled
    assert [r.status_code for r in public] == [200, 200]  # the page and the schema hold no data


@pytest.mark.data
def test_unexpected_errors_answer_a_generic_500(app_parts, utterances, caplog):
    from mvector.apps.server.app import create_app

    predictor, library = app_parts

    def broken_model(waveforms):
        raise RuntimeError("secret internal detail /srv/models")

    predictor.embed_waveforms = broken_model
    app = create_app(predictor, library, api_key=KEY)

    async def call():
        # The app answers instead of raising: a server would otherwise log the crash a second time and
        # drop the keep-alive connection without a Connection: close.
        async with asgi_client(app, raise_app_exceptions=True) as http:
            return await http.post("/recognize", files={"audio": flac(utterances[0])})

    answer = asyncio.run(call())
    assert_clean_error(answer, 500, "internal server error")
    assert "secret" not in answer.text and "RuntimeError" not in answer.text
    assert "secret internal detail" in caplog.text  # logged server-side,
    assert sum("POST /recognize failed" in r.getMessage() for r in caplog.records) == 1  # once


def test_micro_batcher_batches_concurrent_requests_and_routes_results():
    from mvector.apps.server.batcher import MicroBatcher

    calls = []

    def embed(waveforms):
        calls.append(len(waveforms))
        if any(w[0] < 0 for w in waveforms):
            raise ValueError("negative input")
        return np.stack([w * 2 for w in waveforms])

    async def run():
        batcher = MicroBatcher(embed, max_batch=4, max_wait=0.01)
        inputs = [np.full(3, float(i)) for i in range(10)]
        results = await asyncio.gather(*(batcher.embed(w) for w in inputs))
        failed = await asyncio.gather(batcher.embed(np.full(3, -1.0)), batcher.embed(np.ones(3)),
                                      return_exceptions=True)
        after_failure = await batcher.embed(np.full(3, 5.0))
        return inputs, results, failed, after_failure, batcher.stats()

    inputs, results, failed, after_failure, stats = asyncio.run(run())
    for given, got in zip(inputs, results):
        np.testing.assert_array_equal(got, given * 2)
    assert calls[:3] == [4, 4, 2]  # ten concurrent requests in three model calls of at most 4
    assert all(isinstance(f, ValueError) for f in failed)  # one bad batch fails its requests only
    np.testing.assert_array_equal(after_failure, np.full(3, 10.0))
    assert stats == {"batches": 4, "requests": 11, "largest_batch": 4}


def test_loopback_detection_and_key_sources(tmp_path):
    from mvector.errors import ConfigError
    from mvector.apps.server.security import check_bind, is_loopback, key_matches, resolve_api_key

    assert [is_loopback(h) for h in ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]] == [True] * 5
    assert [is_loopback(h) for h in ["0.0.0.0", "::", "192.168.1.5", "example.com", ""]] == [False] * 5
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "k")
    with pytest.raises(ConfigError, match="refusing to listen on ::"):
        check_bind("::", None)

    key_file = tmp_path / "key"
    key_file.write_text("  from-file \n")
    assert resolve_api_key(key_file, {"MVECTOR_API_KEY": "from-env"}) == "from-file"
    assert resolve_api_key(None, {"MVECTOR_API_KEY": " from-env "}) == "from-env"
    assert resolve_api_key(None, {"MVECTOR_API_KEY": "  "}) is None
    key_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_api_key(key_file, {})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_api_key(tmp_path / "missing", {})
    # A header cannot carry it, so nobody could ever authenticate: refused at start-up.
    for bad in ("sésame", "tab\tkey"):
        with pytest.raises(ConfigError, match="MVECTOR_API_KEY: the API key must be printable ASCII"):
            resolve_api_key(None, {"MVECTOR_API_KEY": bad})
    key_file.write_text("clé\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="api_key_file .*printable ASCII"):
        resolve_api_key(key_file, {})
    assert key_matches("sésame", "sésame") and not key_matches("sésame", "sesame")


@pytest.mark.data
def test_dns_rebinding_and_cross_site_requests_are_refused_before_any_work(server, utterances):
    """A foreign Host (an attacker's name resolving to 127.0.0.1) gets 400; a foreign Origin (a
    cross-site form or fetch) 403, even on reads; the server's own page and non-browser clients pass."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        rebound = http.get("/users", headers={"Host": "evil.example:8000"})
        assert_clean_error(rebound, 400, "does not answer for Host 'evil.example:8000'", "--allowed_hosts")
        cross_site = http.post("/recognize", files={"audio": flac(utterances[0])},
                               headers={"Origin": "http://evil.example"})
        assert_clean_error(cross_site, 403, "cross-site request refused")
        assert_clean_error(http.get("/users", headers={"Origin": "null"}), 403, "cross-site")
        own = server.url.rstrip("/")
        assert http.get("/users", headers={"Origin": own}).status_code == 200
        assert http.get("/health", headers={"Host": "localhost:1"}).status_code == 200


def test_allowed_hosts_parsing():
    from mvector.apps.server.guard import LOOPBACK_NAMES, _hostname, parse_allowed_hosts

    assert parse_allowed_hosts(None, "127.0.0.1", loopback=True) == LOOPBACK_NAMES
    assert parse_allowed_hosts(None, "0.0.0.0", loopback=False) is None
    assert parse_allowed_hosts("Voice.Example.org, [::1]", "0.0.0.0", loopback=False) == {"voice.example.org", "::1"}
    assert parse_allowed_hosts("*", "127.0.0.1", loopback=True) is None
    assert [_hostname(h) for h in ("LOCALHOST:8000", "[::1]:80", "::1", "example.org")] == \
        ["localhost", "::1", "::1", "example.org"]


@pytest.mark.data
def test_on_a_full_disk_erasure_works_and_registration_answers_507(model_dir, utterances, tmp_path):
    from disk_helpers import fill, mounted_small_disk
    from mvector.inference.predictor import MVectorPredictor
    from mvector.apps.server.app import create_app
    from mvector.library.store import VoiceprintDB

    with mounted_small_disk(tmp_path / "disk") as disk:
        predictor = MVectorPredictor(model_dir=model_dir, audio_db_path=disk / "db")
        library = VoiceprintDB(disk / "db", fingerprint=predictor.fingerprint(), progress=False)
        app = create_app(predictor, library, api_key=KEY)

        async def calls():
            async with asgi_client(app) as http:
                first = await http.post("/register", headers=AUTH, data={"name": "ola"},
                                        files={"audio": flac(utterances[0])})
                fill(disk)
                refused = await http.post("/register", headers=AUTH, data={"name": "pia"},
                                          files={"audio": flac(utterances[1])})
                erased = await http.delete("/users/ola", headers=AUTH)
                return first, refused, erased

        first, refused, erased = asyncio.run(calls())
        library.close()
        assert first.status_code == 200
        assert_clean_error(refused, 507, "the disk is full")
        assert erased.status_code == 200
