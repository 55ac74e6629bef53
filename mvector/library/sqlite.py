"""The voiceprint library's SQLite database: schema, connection settings (WAL, full sync, secure
delete), write transactions and the errors a failing disk gives."""
import contextlib
import errno
import sqlite3
import time
import warnings
from pathlib import Path

from mvector.library.folder import DB_FILE
from mvector.library.names import VoiceprintError, VoiceprintStorageError


SCHEMA_VERSION = "1"
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    folder TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS enrolments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    file TEXT NOT NULL UNIQUE,
    embedding BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS enrolments_by_user ON enrolments(user_id);
"""


def open_read_only(path: Path) -> sqlite3.Connection:
    """The library's database at ``path`` on storage that cannot be written (a read-only mount or
    snapshot). Its write-ahead log is read where one with content is there; otherwise the file is
    opened as immutable, since SQLite could not create the shared-memory file that WAL reading needs."""
    db = path / DB_FILE
    wal = path / (DB_FILE + "-wal")
    flags = "mode=ro" if wal.is_file() and wal.stat().st_size > 0 else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?{flags}", uri=True, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        version = get_meta(conn, "schema_version")
    except sqlite3.DatabaseError as exc:
        raise read_error(path, exc) from None
    if version != SCHEMA_VERSION:
        raise VoiceprintError(f"{db}: schema version {version}, this mvector reads {SCHEMA_VERSION}")
    return conn


def read_error(path: Path, exc: Exception) -> VoiceprintError:
    """One clear error for a database that cannot be read: damage names the way to restore it."""
    text = str(exc)
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return VoiceprintError(f"{path / DB_FILE}: the database is damaged ({text}); nothing was changed. Restore it "
                               f"(with its -wal file) from a backup, or salvage its rows with "
                               f"'sqlite3 {path / DB_FILE} .recover | sqlite3 recovered.sqlite'")
    return VoiceprintError(f"{path / DB_FILE}: cannot be read ({text})")


def open_database(path: Path) -> sqlite3.Connection:
    """The library's database at ``path`` (a folder), in WAL mode with secure_delete, its schema in place."""
    db = path / DB_FILE
    try:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise VoiceprintError(f"{db}: cannot switch to WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")  # deleted voiceprints are overwritten, not freed
        conn.execute("PRAGMA foreign_keys = ON")
        with transaction(conn, path):
            for statement in _SCHEMA.split(";"):  # executescript would commit mid-transaction
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise VoiceprintError(f"{db}: schema version {version}, this mvector reads {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        if "disk I/O error" in str(exc) or "full" in str(exc):
            raise VoiceprintStorageError(f"voiceprint library {path}: cannot open {DB_FILE} for writing "
                                         f"({exc}): the disk may be full or failing") from None
        raise read_error(path, exc) from None
    return conn

@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, path: Path):
    """One write transaction, taken up front (IMMEDIATE) so it never fails half-way on a lock."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise VoiceprintError(f"{path / DB_FILE}: cannot start a transaction ({exc})") from None
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise storage_error(path, "writing", exc) from None
        raise

def storage_error(path: Path, doing: str, exc: Exception) -> VoiceprintError:
    """One clear error for a failed write; a full disk says so."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "full" in text.lower():
        return VoiceprintStorageError(f"voiceprint library {path}: the disk is full while {doing}; "
                                      f"free some space and try again (erasing users still works)")
    if isinstance(exc, sqlite3.DatabaseError) and "malformed" in text:
        return read_error(path, exc)
    return VoiceprintStorageError(f"voiceprint library {path}: {doing} failed ({text})")


def get_meta(conn, key: str):
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]

def set_meta(conn, key: str, value) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))


def truncate_wal(conn: sqlite3.Connection, path: Path) -> None:
    """Checkpoint the WAL into the database and cut it to zero bytes, so old page images
    (with erased embeddings) do not linger in it. Retries while readers hold old pages."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
        if time.monotonic() > deadline:
            warnings.warn(f"{path / DB_FILE}: another connection kept the write-ahead log busy; "
                          "erased data stays in it until the next checkpoint", stacklevel=3)
            return
        time.sleep(0.01)
