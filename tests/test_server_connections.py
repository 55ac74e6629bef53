"""Slow and hostile clients against a real server process: a thousand connections that never finish
their headers, headers trickled a byte at a time, a body that stalls, more connections than the cap;
the server keeps answering /health, frees what they hold, and its log stays small."""
import logging
import resource
import socket
import time

import httpx
import pytest

from predict_helpers import make_model_dir
from server_helpers import ServerProcess

pytestmark = pytest.mark.integration

pytest.importorskip("fastapi")

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
SLOW_CONNECTIONS = 1000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("connections")
    model = make_model_dir(folder / "model")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SLOW_CONNECTIONS + 200:  # this test process holds the other end of every connection
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    with ServerProcess(["--model_dir", model, "--audio_db_path", folder / "db", "--header_timeout", HEADER_TIMEOUT,
                        "--body_timeout", BODY_TIMEOUT], folder / "server.log") as running:
        yield running


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def closed_by_server(sock, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def health_seconds(server) -> float:
    started = time.perf_counter()
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    return time.perf_counter() - started


@pytest.mark.slow
def test_a_thousand_unfinished_requests_neither_block_nor_stay(server):
    log_before = server.log_path.stat().st_size
    slow = []
    for _ in range(SLOW_CONNECTIONS):
        sock = connect(server)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the blank line that ends the headers never comes
        slow.append(sock)
    try:
        assert max(health_seconds(server) for _ in range(5)) < 1.0
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        assert all(closed_by_server(sock, max(0.1, deadline - time.monotonic())) for sock in slow)
    finally:
        for sock in slow:
            sock.close()
    assert health_seconds(server) < 1.0
    assert server.log_path.stat().st_size - log_before < 100_000


def test_headers_trickled_a_byte_at_a_time_are_cut_off(server):
    sock = connect(server)
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 100
    started = time.monotonic()
    try:
        for byte in request:
            sock.sendall(bytes([byte]))
            time.sleep(0.1)
            if time.monotonic() - started > HEADER_TIMEOUT + 3:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert closed_by_server(sock, 1.0)
    assert time.monotonic() - started < HEADER_TIMEOUT + 3
    sock.close()


def test_a_stalled_body_gets_408_and_frees_the_connection(server):
    sock = connect(server)
    boundary = b"x" * 16
    sock.sendall(b"POST /recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                 b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n--" + boundary + b"\r\n")
    started = time.monotonic()
    sock.settimeout(BODY_TIMEOUT + 5)
    answer = b""
    while chunk := sock.recv(4096):  # the answer, then the server closes the connection
        answer += chunk
    assert BODY_TIMEOUT - 0.5 < time.monotonic() - started < BODY_TIMEOUT + 3
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body too slow" in answer
    sock.close()
    assert health_seconds(server) < 1.0


def test_keep_alive_connections_still_work(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
            time.sleep(0.2)


def test_connections_over_the_cap_are_closed_at_once(tmp_path):
    model = make_model_dir(tmp_path / "model")
    with ServerProcess(["--model_dir", model, "--audio_db_path", tmp_path / "db", "--max_connections", 20],
                       tmp_path / "server.log") as capped:
        held = [connect(capped) for _ in range(20)]
        extra = connect(capped)
        try:
            assert closed_by_server(extra, 2.0)
        finally:
            for sock in held + [extra]:
                sock.close()
        time.sleep(0.5)
        assert health_seconds(capped) < 1.0


@pytest.mark.unit
def test_the_log_is_rate_limited():
    from mvector.apps.server.connections import RateLimitedLog

    log_filter = RateLimitedLog(burst=3, window=0.2)

    def record(message):
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, None, None)

    passed = [log_filter.filter(record("accept failed: %s")) for _ in range(50)]
    assert passed.count(True) == 3
    assert log_filter.filter(record("another message"))
    time.sleep(0.25)
    summary = record("accept failed: %s")
    assert log_filter.filter(summary) and "47 more like this" in summary.msg
