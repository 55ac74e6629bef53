"""Running ``infer_server.py`` as a real process for the server tests."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python infer_server.py --port <free port> *args`` with ``env`` added to the environment
    ($MVECTOR_API_KEY removed unless given); ``start()`` returns once /health answers."""

    def __init__(self, args, log_path, api_key=None, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, str(ROOT / "infer_server.py"), "--port", str(self.port), *map(str, args)]
        self.env = {k: v for k, v in os.environ.items() if k != "MVECTOR_API_KEY"}
        self.env.update(env or {})
        if api_key is not None:
            self.env["MVECTOR_API_KEY"] = api_key
        self.headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
        self.log_path = Path(log_path)
        self.process = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", headers=self.headers, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer within {STARTUP_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM (uvicorn's graceful shutdown); the exit status."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
