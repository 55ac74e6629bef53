"""The voiceprint library on PostgreSQL, for several server replicas sharing one library.

PostgreSQL holds everything: users, enrolments with their embeddings and their audio (16-bit FLAC,
so any replica can re-embed everyone for a new model), and the model fingerprint. Every change is
one transaction that also bumps a version number and sends ``NOTIFY`` on commit; each replica keeps
its voiceprints in memory (searches never touch the database) and a listener thread applies the
notified changes, or reloads everything after a lost connection or a missed version, so a user
enrolled through one replica is recognised by another within about a second.

The password never comes from the URL: libpq reads it from ``PGPASSWORD``, ``~/.pgpass`` or the
file named by ``PGPASSFILE``, and no message here prints more of the URL than user, host, port and
database. Needs ``psycopg`` (``pip install 'mvector-sv[postgres]'``).
"""
import contextlib
import io
import json
import threading
import time
import uuid

import numpy as np
from tqdm import tqdm

from mvector.audio import load_audio
from mvector.library.folder import encode_audio
from mvector.library.matrix import VoiceprintMatrix, VoiceprintStore, check_embedding, check_top_k, unit, voiceprint
from mvector.library.names import VoiceprintError, VoiceprintUnavailable, check_new_user_name, normalize_user_name

SCHEMA_VERSION = "1"
CHANNEL = "mvector_library"
# One advisory lock serialises schema creation and re-embedding across replicas.
LOCK_KEY = 0x6D766563
REEMBED_BATCH = 16
# How long the listener waits for a notification before checking whether it should stop.
LISTEN_POLL_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mvector_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS mvector_users (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS mvector_enrolments (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES mvector_users(id) ON DELETE CASCADE,
    key text NOT NULL UNIQUE,
    audio bytea NOT NULL,
    sample_rate integer NOT NULL,
    embedding bytea NOT NULL,
    created double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS mvector_enrolments_by_user ON mvector_enrolments (user_id);
INSERT INTO mvector_meta VALUES ('schema_version', '1'), ('version', '0') ON CONFLICT DO NOTHING
"""


def is_postgres_url(path) -> bool:
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


def _psycopg():
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise VoiceprintError("a PostgreSQL voiceprint library needs psycopg: "
                              "pip install 'mvector-sv[postgres]'") from exc
    return psycopg, psycopg_pool


def describe_url(url: str) -> str:
    """The URL as messages may show it: never a password, nor options that could carry secrets."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception:
        return "postgresql://(unparseable URL)"
    host, port = parts.get("host", "localhost"), parts.get("port", "5432")
    return f"postgresql://{parts.get('user', '')}{'@' if parts.get('user') else ''}{host}:{port}/{parts.get('dbname', '')}"


def checked_conninfo(url: str) -> str:
    """``url`` for libpq, refused when it holds a password (visible in ``ps`` and shell history)."""
    psycopg, _ = _psycopg()
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise VoiceprintError(f"not a valid PostgreSQL URL: {describe_url(url)}") from None
    if "password" in parts:
        raise VoiceprintError(f"{describe_url(url)}: the URL holds a password, which anyone can read in the process "
                              "list; give it in PGPASSWORD, ~/.pgpass or a file named by PGPASSFILE instead")
    parts.setdefault("connect_timeout", str(CONNECT_TIMEOUT_SECONDS))
    parts.setdefault("application_name", "mvector")
    return make_conninfo("", **parts)


# Connection failures that are settings, not outages.
_REFUSALS = ("authentication failed", "does not exist", "no pg_hba.conf entry", "permission denied")


def _brief(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


class PostgresVoiceprintDB(VoiceprintStore):
    """The voiceprint library in a PostgreSQL database at ``url`` (``postgresql://user@host:port/db``),
    with the same interface and guarantees as ``VoiceprintDB``."""

    read_only = False

    def __init__(self, url: str, embed_fn=None, fingerprint: str | None = None, sample_rate: int = 16000,
                 progress: bool = True, pool_size: int = 4):
        psycopg, psycopg_pool = _psycopg()
        self._errors = (psycopg.Error,)
        self._operational = (psycopg.OperationalError, psycopg_pool.PoolTimeout)
        self.path = describe_url(url)
        self.embed_fn, self.fingerprint, self.sample_rate, self.progress = embed_fn, fingerprint, sample_rate, progress
        self._conninfo = checked_conninfo(url)
        self._lock = threading.RLock()
        self._voiceprints = VoiceprintMatrix()
        self._version = -1
        self._stop = threading.Event()
        self._listener = None
        self._pool = None
        try:
            self._pool = psycopg_pool.ConnectionPool(self._conninfo, min_size=1, max_size=pool_size, open=False,
                                                     timeout=CONNECT_TIMEOUT_SECONDS, name="mvector")
            with self._database("connecting"):  # one plain attempt first: the pool would retry a wrong password
                psycopg.connect(self._conninfo).close()
                self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
            with self._database("opening the library"):
                self._create_schema()
                self._follow_model()
            self._resync()
        except BaseException:
            self.close()
            raise
        self._listener = threading.Thread(target=self._listen, name="mvector-library-listener", daemon=True)
        self._listener.start()

    # ----- public API -------------------------------------------------------------------------

    def register(self, name: str, waveform: np.ndarray, embedding: np.ndarray, key: str | None = None) -> bool:
        """Add one enrolment to user ``name`` (created if new). ``key`` names the enrolment (a copy
        between stores keeps it, so copying twice adds nothing): False when it is already stored."""
        name = normalize_user_name(name)
        vector = check_embedding(embedding, what=f"embedding for user {name!r}")
        wav = load_audio(waveform, sample_rate=self.sample_rate, target_sample_rate=self.sample_rate,
                         name=f"enrolment audio for user {name!r}")
        audio = encode_audio(wav, self.sample_rate).getvalue()
        with self._lock, self._database(f"registering {name!r}"), self._pool.connection() as conn:
            with conn.transaction():
                if key is not None and conn.execute("SELECT 1 FROM mvector_enrolments WHERE key = %s",
                                                    (key,)).fetchone():
                    return False
                self._check_model(conn, len(vector))
                row = conn.execute("SELECT id FROM mvector_users WHERE name = %s", (name,)).fetchone()
                if row is None:
                    check_new_user_name(name)
                    row = conn.execute("INSERT INTO mvector_users (name, created) VALUES (%s, %s) RETURNING id",
                                       (name, time.time())).fetchone()
                conn.execute("INSERT INTO mvector_enrolments (user_id, key, audio, sample_rate, embedding, created) "
                             "VALUES (%s, %s, %s, %s, %s, %s)",
                             (row[0], key or uuid.uuid4().hex, audio, self.sample_rate, vector.tobytes(), time.time()))
                blobs = [bytes(b) for (b,) in conn.execute(
                    "SELECT embedding FROM mvector_enrolments WHERE user_id = %s ORDER BY id", (row[0],))]
                version = self._announce(conn, "set", name)
            self._apply(version, lambda: self._voiceprints.set(name, voiceprint(blobs)))
        return True

    def remove_user(self, name: str) -> bool:
        """Erase user ``name``: their rows, audio and embeddings, in every replica. False when unknown.
        PostgreSQL keeps the bytes of deleted rows on disk until VACUUM reuses their space (see the README)."""
        name = normalize_user_name(name)
        with self._lock, self._database(f"removing {name!r}"), self._pool.connection() as conn:
            with conn.transaction():
                gone = conn.execute("DELETE FROM mvector_users WHERE name = %s RETURNING id", (name,)).fetchone()
                if gone is None:
                    return False
                version = self._announce(conn, "drop", name)
            self._apply(version, lambda: self._voiceprints.drop(name))
        return True

    def get_users(self) -> list[str]:
        with self._lock:
            return sorted(self._voiceprints.names)

    def search(self, embedding: np.ndarray, top_k: int = 5) -> list[tuple[str, float]]:
        top_k = check_top_k(top_k)
        query = check_embedding(embedding, what="query embedding")
        with self._lock:
            return self._voiceprints.search(query, top_k)


    def enrolments(self):
        """Every enrolment as ``(name, key, waveform, embedding)``, for copying to another store."""
        with self._database("reading enrolments"), self._pool.connection() as conn:
            rows = conn.execute("SELECT u.name, e.key, e.audio, e.embedding FROM mvector_enrolments e "
                                "JOIN mvector_users u ON u.id = e.user_id ORDER BY e.id").fetchall()
        for name, key, audio, embedding in rows:
            yield name, key, load_audio(io.BytesIO(bytes(audio)), target_sample_rate=self.sample_rate), \
                np.frombuffer(bytes(embedding), np.float32)

    def stored_fingerprint(self):
        """The fingerprint of the model the stored voiceprints were made by (None before any)."""
        with self._database("reading the model fingerprint"), self._pool.connection() as conn:
            return self._meta(conn, "fingerprint")

    def counts(self) -> tuple[int, int]:
        """``(users, enrolments)`` stored."""
        with self._database("counting"), self._pool.connection() as conn:
            users = conn.execute("SELECT count(*) FROM mvector_users").fetchone()[0]
            enrolments = conn.execute("SELECT count(*) FROM mvector_enrolments").fetchone()[0]
        return users, enrolments

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
            self._listener = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __len__(self) -> int:
        with self._lock:
            return self._voiceprints.count

    # ----- database ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _database(self, doing: str):
        """Turns the driver's errors into ours: an unreachable server is VoiceprintUnavailable."""
        if self._pool is None:
            raise VoiceprintError(f"voiceprint library {self.path} is closed")
        try:
            yield
        except self._operational as exc:
            if any(words in str(exc) for words in _REFUSALS):  # waiting will not help: say what is wrong
                raise VoiceprintError(f"voiceprint library {self.path}: the database refused the connection "
                                      f"({_brief(exc)})") from None
            raise VoiceprintUnavailable(f"voiceprint library {self.path}: the database cannot be reached while "
                                        f"{doing} ({_brief(exc)}); try again") from None
        except self._errors as exc:
            raise VoiceprintError(f"voiceprint library {self.path}: {doing} failed ({_brief(exc)})") from None

    def _create_schema(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            for statement in _SCHEMA.split(";"):
                conn.execute(statement)
            stored = self._meta(conn, "schema_version")
            if stored != SCHEMA_VERSION:
                raise VoiceprintError(f"{self.path}: schema version {stored}, this mvector reads {SCHEMA_VERSION}")

    @staticmethod
    def _meta(conn, key: str):
        row = conn.execute("SELECT value FROM mvector_meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _set_meta(conn, key: str, value) -> None:
        conn.execute("INSERT INTO mvector_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                     (key, str(value)))

    def _check_model(self, conn, dim: int) -> None:
        stored = self._meta(conn, "fingerprint")
        if self.fingerprint is not None and stored is not None and stored != self.fingerprint:
            raise VoiceprintError(f"{self.path}: was re-embedded with another model (fingerprint {stored}) while "
                                  f"open with model {self.fingerprint}; restart this replica to follow it")
        stored_dim = self._meta(conn, "embd_dim")
        if stored_dim is None:
            self._set_meta(conn, "embd_dim", dim)
        elif int(stored_dim) != dim:
            raise VoiceprintError(f"{self.path}: embedding has {dim} dimensions but the library holds "
                                  f"{stored_dim}-dimensional voiceprints")

    def _announce(self, conn, op: str, name: str | None) -> int:
        """Bump the library's version and notify every replica, both on commit; the new version."""
        version = int(conn.execute("UPDATE mvector_meta SET value = (value::bigint + 1)::text WHERE key = 'version' "
                                   "RETURNING value").fetchone()[0])
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps({"v": version, "op": op, "name": name})))
        return version

    def _apply(self, version: int, change) -> None:
        """Apply a committed change to the voiceprints in memory, unless the listener got there first."""
        with self._lock:
            if version == self._version + 1:
                change()
                self._version = version
            elif version > self._version:  # changes in between were not seen yet: read everything
                self._resync()

    def _resync(self) -> None:
        """Reload every voiceprint and the version they reflect (one snapshot)."""
        with self._lock, self._database("loading voiceprints"), self._pool.connection() as conn:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                version = int(self._meta(conn, "version"))
                rows = conn.execute("SELECT u.name, e.embedding FROM mvector_enrolments e JOIN mvector_users u "
                                    "ON u.id = e.user_id ORDER BY e.user_id, e.id").fetchall()
            self._voiceprints.load([(name, bytes(blob)) for name, blob in rows])
            self._version = version

    # ----- other replicas ---------------------------------------------------------------------

    def _listen(self) -> None:
        """Follow other replicas' changes; after a lost connection, reconnect and reload everything."""
        psycopg, _ = _psycopg()
        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._resync()  # whatever changed while not listening
                    delay = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=LISTEN_POLL_SECONDS):
                            self._on_notification(note.payload)
            except (psycopg.Error, VoiceprintError):
                self._stop.wait(delay)
                delay = min(5.0, delay * 2)

    def _on_notification(self, payload: str) -> None:
        change = json.loads(payload)
        version, op, name = change["v"], change["op"], change.get("name")
        with self._lock:
            if version <= self._version:
                return  # this replica's own change, applied at its commit
            if version != self._version + 1 or op not in ("set", "drop"):
                self._resync()
                return
        if op == "drop":
            self._apply(version, lambda: self._voiceprints.drop(name))
            return
        with self._database("following another replica"), self._pool.connection() as conn:
            blobs = [bytes(b) for (b,) in conn.execute(
                "SELECT e.embedding FROM mvector_enrolments e JOIN mvector_users u ON u.id = e.user_id "
                "WHERE u.name = %s ORDER BY e.id", (name,))]
        self._apply(version, lambda: self._voiceprints.set(name, voiceprint(blobs)) if blobs
                    else self._voiceprints.drop(name))

    # ----- model changes ----------------------------------------------------------------------

    def _follow_model(self) -> None:
        """Store the model fingerprint, or re-embed every enrolment when the library was built with
        another model: one replica does it under the advisory lock, the others wait for it."""
        if self.fingerprint is None:
            return
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            stored = self._meta(conn, "fingerprint")
            if stored == self.fingerprint:
                return
            ids = [i for (i,) in conn.execute("SELECT id FROM mvector_enrolments ORDER BY id")]
            if ids:
                self._reembed(conn, stored, ids)
            self._set_meta(conn, "fingerprint", self.fingerprint)
            self._announce(conn, "reload", None)

    def _reembed(self, conn, stored: str, ids: list) -> None:
        if self.embed_fn is None:
            raise VoiceprintError(f"{self.path}: voiceprints were made by model {stored}, not by model "
                                  f"{self.fingerprint}; re-embedding them needs embed_fn (open the library "
                                  "through MVectorPredictor)")
        dim = None
        with tqdm(total=len(ids), desc="re-embedding voiceprints for the new model", unit="enrolment",
                  disable=not self.progress) as bar:
            for start in range(0, len(ids), REEMBED_BATCH):
                batch = conn.execute("SELECT id, audio FROM mvector_enrolments WHERE id = ANY(%s) ORDER BY id",
                                     (ids[start:start + REEMBED_BATCH],)).fetchall()
                waves = [load_audio(io.BytesIO(bytes(audio)), target_sample_rate=self.sample_rate) for _, audio in batch]
                vectors = np.asarray(self.embed_fn(waves), dtype=np.float32)
                if vectors.ndim != 2 or len(vectors) != len(batch) or not np.isfinite(vectors).all():
                    raise VoiceprintError(f"embed_fn returned {vectors.shape} {vectors.dtype} for {len(batch)} "
                                          f"waveforms; expected finite [{len(batch)}, E]")
                dim = vectors.shape[1]
                for vector, (row_id, _) in zip(unit(vectors), batch):
                    conn.execute("UPDATE mvector_enrolments SET embedding = %s WHERE id = %s",
                                 (vector.astype(np.float32).tobytes(), row_id))
                bar.update(len(batch))
        self._set_meta(conn, "embd_dim", dim)
