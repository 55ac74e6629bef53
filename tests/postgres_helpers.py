"""A real PostgreSQL server for the tests: a fresh cluster (initdb, pg_ctl) in a temporary folder,
run as an unprivileged user, listening on a free loopback port with password authentication.

Tests that need it skip, saying why, where PostgreSQL's server programs are missing; under
``CI=true`` (where scripts/test.sh installs them) they fail instead."""
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from server_helpers import free_port

PASSWORD = "pg-test-secret"
ROLE = "mvector"


def server_programs() -> Path | None:
    for candidate in [shutil.which("pg_ctl"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)]:
        if candidate and (Path(candidate).parent / "initdb").exists():
            return Path(candidate).resolve().parent
    return None


def unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests must run under CI: {reason}")
    pytest.skip(reason)


class PostgresServer:
    """``durable=False`` (the tests) runs without fsync, much faster and as good for correctness
    tests; a benchmark of latencies wants ``durable=True``."""

    def __init__(self, durable: bool = False):
        self.durable = durable
        self.bin = server_programs()
        if self.bin is None:
            unavailable("PostgreSQL's server programs (initdb, pg_ctl) are not installed (apt-get install postgresql)")
        self.as_user = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as an unprivileged account
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root and there is no 'postgres' account to run the server as")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="mvector-pg-"))
        os.chmod(self.folder, 0o755)
        if self.as_user:
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql://{ROLE}@127.0.0.1:{self.port}/voiceprints"

    def _run(self, *command, check=True):
        return subprocess.run([*self.as_user, *map(str, command)], capture_output=True, text=True, check=check)

    def start(self):
        if not self.data.exists():
            pwfile = self.folder / "pw"
            pwfile.write_text(PASSWORD + "\n")
            if self.as_user:
                shutil.chown(pwfile, "postgres")
            self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8")
            self._pg_ctl("start")
            self._psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            self._psql(f"CREATE DATABASE voiceprints OWNER {ROLE}")
        else:
            self._pg_ctl("start")
        return self

    def _pg_ctl(self, action):
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1" + ("" if self.durable else " -c fsync=off")
        done = self._run(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", self.folder / "log", "-w",
                         "-t", "60", action, check=False)
        if done.returncode:
            raise RuntimeError(f"pg_ctl {action} failed: {done.stderr}\n{(self.folder / 'log').read_text()[-2000:]}")

    def _psql(self, sql):
        self._run(shutil.which("psql") or self.bin / "psql", "-h", self.folder, "-p", self.port, "-U", "postgres",
                  "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql)

    def psql(self, sql, database="voiceprints"):
        """Run SQL as the superuser; its output."""
        return self._run(shutil.which("psql") or self.bin / "psql", "-h", self.folder, "-p", self.port, "-U", "postgres",
                         "-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql).stdout

    def reset(self):
        """Empty the library's tables, so each test starts from nothing."""
        self.psql("DROP TABLE IF EXISTS mvector_enrolments, mvector_users, mvector_meta")

    def stop(self):
        self._pg_ctl("stop")

    def restart(self):
        self._pg_ctl("restart")

    def remove(self):
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
