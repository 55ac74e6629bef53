"""The voiceprint library: who is enrolled, with which voice, durably and privately.

Layout under ``path``: ``voiceprints.sqlite`` (users, enrolment embeddings, metadata; WAL mode) and
one folder of enrolment audio (16-bit FLAC) per user, named by an internal random id, never by the
user's name, so no name can collide with another or with the library's own files.

Crash safety: every change is one SQLite transaction. Audio is written under a temporary name
first and renamed into place after the commit; erasing a user renames their folder to an
``.erasing-`` name before the commit and deletes it after. Opening the library finishes what a
killed process left: renames for committed rows, erasures that committed (an ``.erasing-`` folder
whose user is gone; one whose user is still there is renamed back), temporary audio with no row
(no registration can be in flight while the sweep holds the lock file; without flock, once older
than TMP_GRACE_SECONDS). It deletes nothing else: user folders and audio files the
database does not know (a lost, damaged or older database) are moved to ``.quarantine/`` and
reported, and move back by themselves once a restored database knows them again. A missing or empty
database beside stored audio is an error, never a fresh empty library.
A row whose audio file went missing keeps its embedding: the embedding is what search uses, the
audio only serves re-embedding when the model changes.

A user's voiceprint is the renormalised mean of their L2-normalised enrolment embeddings; searches
score a query against an in-memory float32 matrix of all voiceprints with one matrix product.
"""

import contextlib
import os
import shutil
import sqlite3
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mvector.audio import load_audio
from mvector.library.folder import AUDIO_SUFFIX, DB_FILE, ERASING_PREFIX, QUARANTINE_DIR, TMP_PREFIX, AudioFolder
from mvector.library.matrix import VoiceprintMatrix, VoiceprintStore, check_embedding, check_top_k, unit, voiceprint
from mvector.library.names import VoiceprintError, VoiceprintStorageError, check_new_user_name, normalize_user_name
from mvector.library.sqlite import (get_meta, open_database, open_read_only, read_error, set_meta, storage_error, transaction,
                                    truncate_wal)


try:
    import fcntl
except ImportError:  # Windows: no flock; one process at a time is all it can share safely.
    fcntl = None

LOCK_FILE = ".lock"
# Waveforms handed to embed_fn per call while re-embedding: bounded memory, batched model calls.
REEMBED_BATCH = 16



class VoiceprintDB(VoiceprintStore):
    """A durable library of users' voiceprints; safe to share between processes.

    ``embed_fn(list of float32 waveforms at sample_rate) -> [N, E]`` is only needed to follow a
    model change: when ``fingerprint`` differs from the one stored, all stored enrolment audio is
    re-embedded with it in one transaction. ``fingerprint=None`` skips that check.
    """

    def __init__(self, path="audio_db/", embed_fn=None, fingerprint: str | None = None,
                 sample_rate: int = 16000, progress: bool = True):
        self.path = Path(path)
        self.embed_fn = embed_fn
        self.fingerprint = fingerprint
        self.sample_rate = sample_rate
        self.progress = progress
        self._lock = threading.RLock()
        self.folder = AudioFolder(self.path, sample_rate)
        self._voiceprints = VoiceprintMatrix()
        self._conn = None
        self._lock_fd = None
        # A library on storage this process cannot write (a read-only mount, a snapshot) is opened
        # read-only: listing, search and recognition work; registering and removing say why not.
        self.read_only = self.path.is_dir() and not os.access(self.path, os.W_OK)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VoiceprintError(f"cannot create the voiceprint library folder {self.path}: {exc}") from None
        if not self.path.is_dir():
            raise VoiceprintError(f"voiceprint library path {self.path} is not a folder")
        if self.read_only:
            try:
                self._open_read_only()
            except BaseException:
                self.close()
                raise
            return
        try:
            self._lock_fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            self.folder.check_database_present()
            # On a full disk the erasure reserve makes room to open, so users can still be erased.
            self._conn = self._with_reserve(lambda: open_database(self.path))
            self._sweep()
            self._follow_model()
            self._load()
            self.folder.set_reserve_aside()
        except sqlite3.DatabaseError as exc:  # a damaged page met while reading what the sweep needs
            self.close()
            raise read_error(self.path, exc) from None
        except BaseException:
            self.close()
            raise

    def _open_read_only(self) -> None:
        lock = self.path / LOCK_FILE
        if lock.is_file():  # a shared lock still keeps an erasure elsewhere from running mid-read
            self._lock_fd = os.open(lock, os.O_RDONLY)
        self.folder.check_database_present()
        if not (self.path / DB_FILE).is_file():
            raise VoiceprintError(f"voiceprint library {self.path} cannot be written and holds no {DB_FILE}; "
                                  "give a writable folder to start a library")
        self._conn = open_read_only(self.path)
        stored = get_meta(self._conn, "fingerprint")
        if self.fingerprint is not None and stored is not None and stored != self.fingerprint:
            raise VoiceprintError(
                f"voiceprint library {self.path} cannot be written and its voiceprints were made by model {stored}, "
                f"not by model {self.fingerprint}; open it once where it can be written to re-embed them, or "
                "use the model it was made with")
        self._load()

    def _check_writable(self, doing: str) -> None:
        if self.read_only:
            raise VoiceprintError(f"voiceprint library {self.path} is read-only (its folder cannot be written), "
                                  f"so {doing} is not possible; listing and recognition work")

    # ----- public API -------------------------------------------------------------------------

    def register(self, name: str, waveform: np.ndarray, embedding: np.ndarray, key: str | None = None) -> bool:
        """Add one enrolment (its audio at ``sample_rate`` and its embedding) to user ``name``,
        creating the user if new. ``key`` names the enrolment (32 hex digits; a copy between stores
        keeps it, so copying twice adds nothing): False when it is already stored."""
        name = normalize_user_name(name)
        self._check_writable(f"registering {name!r}")
        vector = check_embedding(embedding, what=f"embedding for user {name!r}")
        wav = load_audio(waveform, sample_rate=self.sample_rate, target_sample_rate=self.sample_rate,
                         name=f"enrolment audio for user {name!r}")
        if key is not None and not (len(key) == 32 and all(c in "0123456789abcdef" for c in key)):
            raise VoiceprintError(f"enrolment key must be 32 lowercase hex digits, got {key!r}")
        file = (key or uuid.uuid4().hex) + AUDIO_SUFFIX
        tmp = self.path / (TMP_PREFIX + file)
        with self._lock, self._file_lock(shared=True):
            outside_change = self._changed_elsewhere()
            try:
                try:
                    self.folder.write_audio(tmp, wav)
                except OSError as exc:
                    raise storage_error(self.path, f"writing the enrolment audio of user {name!r}", exc) from None
                with transaction(self._live_conn(), self.path) as conn:
                    if key is not None and conn.execute("SELECT 1 FROM enrolments WHERE file = ?", (file,)).fetchone():
                        tmp.unlink(missing_ok=True)
                        return False
                    self._check_same_model(conn)
                    self._check_dimension(conn, len(vector))
                    row = conn.execute("SELECT id, folder FROM users WHERE name = ?", (name,)).fetchone()
                    if row is None:
                        check_new_user_name(name)
                        folder = uuid.uuid4().hex
                        user_id = conn.execute("INSERT INTO users (name, folder, created) VALUES (?, ?, ?)",
                                               (name, folder, time.time())).lastrowid
                    else:
                        user_id, folder = row
                    conn.execute("INSERT INTO enrolments (user_id, file, embedding, created) "
                                 "VALUES (?, ?, ?, ?)", (user_id, file, vector.tobytes(), time.time()))
                    blobs = [b for (b,) in conn.execute(
                        "SELECT embedding FROM enrolments WHERE user_id = ?", (user_id,))]
                    outside_change = outside_change or self._changed_elsewhere()
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self.folder.place_audio(tmp, folder, file)
            if outside_change:
                self._load()
            else:
                self._voiceprints.set(name, voiceprint(blobs))
        return True

    def remove_user(self, name: str) -> bool:
        """Erase user ``name``: rows, audio, and (secure_delete + WAL truncation) the bytes of
        their embeddings in the database files. False when there is no such user."""
        name = normalize_user_name(name)
        self._check_writable(f"removing {name!r}")
        erased = self._with_reserve(lambda: self._erase(name))
        self.folder.set_reserve_aside()
        return erased

    def _with_reserve(self, write):
        """``write()``, retried with one more chunk of the erasure reserve freed each time the disk is full."""
        while True:
            try:
                return write()
            except VoiceprintStorageError:
                if not self.folder.release_reserve():
                    raise

    def _erase(self, name: str) -> bool:
        with self._lock, self._file_lock(shared=False):
            outside_change = self._changed_elsewhere()
            row = None
            try:
                with transaction(self._live_conn(), self.path) as conn:
                    row = conn.execute("SELECT id, folder FROM users WHERE name = ?", (name,)).fetchone()
                    if row is not None:
                        conn.execute("DELETE FROM enrolments WHERE user_id = ?", (row[0],))
                        conn.execute("DELETE FROM users WHERE id = ?", (row[0],))
                        # Marked before the commit: a folder under this name whose user is gone was
                        # erased, and the next open may finish deleting it.
                        self.folder.rename_folder(row[1], ERASING_PREFIX + row[1])
                    outside_change = outside_change or self._changed_elsewhere()
            except BaseException:
                if row is not None:
                    self.folder.rename_folder(ERASING_PREFIX + row[1], row[1])
                raise
            if row is None:
                return False
            truncate_wal(self._live_conn(), self.path)
            shutil.rmtree(self.path / (ERASING_PREFIX + row[1]), ignore_errors=True)
            if outside_change:
                self._load()
            else:
                self._voiceprints.drop(name)
            return True

    def enrolments(self):
        """Every enrolment as ``(name, key, waveform, embedding)``, for copying to another store; an
        enrolment whose audio file is missing is skipped with a warning."""
        with self._lock:
            rows = self._live_conn().execute("SELECT u.name, u.folder, e.file, e.embedding FROM enrolments e "
                                             "JOIN users u ON u.id = e.user_id ORDER BY e.id").fetchall()
        for name, folder, file, embedding in rows:
            audio = self.path / folder / file
            if not audio.is_file():
                warnings.warn(f"{audio}: the enrolment audio of user {name!r} is missing; not copied", stacklevel=2)
                continue
            yield name, Path(file).stem, load_audio(audio, target_sample_rate=self.sample_rate), \
                np.frombuffer(embedding, np.float32)

    def stored_fingerprint(self):
        """The fingerprint of the model the stored voiceprints were made by (None before any)."""
        with self._lock:
            return get_meta(self._live_conn(), "fingerprint")

    def counts(self) -> tuple[int, int]:
        """``(users, enrolments)`` stored."""
        with self._lock:
            conn = self._live_conn()
            return (conn.execute("SELECT COUNT(*) FROM users").fetchone()[0],
                    conn.execute("SELECT COUNT(*) FROM enrolments").fetchone()[0])

    def get_users(self) -> list[str]:
        """Names of all enrolled users, sorted."""
        with self._lock:
            self._refresh()
            return sorted(self._voiceprints.names)

    def search(self, embedding: np.ndarray, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` users whose voiceprints are closest (cosine) to ``embedding``, best first."""
        top_k = check_top_k(top_k)
        query = check_embedding(embedding, what="query embedding")
        with self._lock:
            self._refresh()
            return self._voiceprints.search(query, top_k)


    def close(self) -> None:
        """Release the database and lock file; further calls fail. Safe to call twice."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return self._voiceprints.count

    # ----- database ---------------------------------------------------------------------------

    def _live_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise VoiceprintError(f"voiceprint library {self.path} is closed")
        return self._conn

    def _data_version(self) -> int:
        try:
            return self._live_conn().execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise read_error(self.path, exc) from None

    def _changed_elsewhere(self) -> bool:
        """Whether another connection committed since the matrix was loaded."""
        return self._data_version() != self._loaded_version

    def _check_same_model(self, conn) -> None:
        stored = get_meta(conn, "fingerprint")
        if self.fingerprint is not None and stored is not None and stored != self.fingerprint:
            raise VoiceprintError(
                f"{self.path}: was re-embedded with another model (fingerprint {stored}) while open "
                f"with model {self.fingerprint}; reopen the library to follow it")

    def _check_dimension(self, conn, dim: int) -> None:
        stored = get_meta(conn, "embd_dim")
        if stored is None:
            set_meta(conn, "embd_dim", dim)
        elif int(stored) != dim:
            raise VoiceprintError(f"{self.path}: embedding has {dim} dimensions but the library holds "
                                  f"{stored}-dimensional voiceprints")

    # ----- in-memory voiceprints ----------------------------------------------------------------

    def _refresh(self) -> None:
        if self._changed_elsewhere():
            self._load()

    def _load(self) -> None:
        """Rebuild the matrix from the database: one voiceprint per user."""
        conn = self._live_conn()
        # The version is read first: a commit landing before the rows are read only makes the
        # next refresh reload once more, never miss a change.
        version = self._data_version()
        try:
            self._check_same_model(conn)
            rows = conn.execute("SELECT u.name, e.embedding FROM enrolments e JOIN users u "
                                "ON u.id = e.user_id ORDER BY e.user_id").fetchall()
        except sqlite3.DatabaseError as exc:  # a damaged page: one clear error saying how to restore
            raise read_error(self.path, exc) from None
        self._voiceprints.load(rows)
        self._loaded_version = version

    # ----- files ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _file_lock(self, shared: bool):
        """Writers hold the library's lock file shared from their temporary audio to its final
        name; sweeping and erasing hold it exclusive, so they never race a registration."""
        if fcntl is None or self._lock_fd is None:
            yield
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """The folder's crash recovery (``AudioFolder.sweep``), with the lock that keeps registrations out."""
        with self._file_lock(shared=False):
            conn = self._live_conn()
            folders = {folder for (folder,) in conn.execute("SELECT folder FROM users")}
            placed = dict(conn.execute("SELECT e.file, u.folder FROM enrolments e JOIN users u "
                                       "ON u.id = e.user_id"))
            unknown_folders, unknown_files = self.folder.sweep(
                folders, placed, others_may_write=self._lock_fd is None or fcntl is None)
            if unknown_folders or unknown_files:
                warnings.warn(
                    f"voiceprint library {self.path}: {unknown_folders} user folder(s) and {unknown_files} audio "
                    f"file(s) that {DB_FILE} does not know were moved to {self.path / QUARANTINE_DIR}; nothing was "
                    f"deleted. If {DB_FILE} was restored from an older backup or lost its -wal file, put the newer "
                    f"database back (the audio returns by itself); otherwise the quarantine is yours to delete",
                    stacklevel=3)

    # ----- model changes ----------------------------------------------------------------------

    def _follow_model(self) -> None:
        """Store the model fingerprint, or re-embed the library when it was built with another."""
        if self.fingerprint is None:
            return
        with self._file_lock(shared=False), transaction(self._live_conn(), self.path) as conn:
            stored = get_meta(conn, "fingerprint")
            if stored == self.fingerprint:
                return
            enrolments = conn.execute("SELECT e.id, u.name, u.folder, e.file FROM enrolments e "
                                      "JOIN users u ON u.id = e.user_id ORDER BY e.id").fetchall()
            if enrolments:
                self._reembed(conn, stored, enrolments)
            set_meta(conn, "fingerprint", self.fingerprint)

    def _reembed(self, conn, stored: str, enrolments: list) -> None:
        if self.embed_fn is None:
            raise VoiceprintError(
                f"{self.path}: voiceprints were made by model {stored}, not by model {self.fingerprint}; "
                "re-embedding them needs embed_fn (open the library through MVectorPredictor)")
        missing = sorted({name for _, name, folder, file in enrolments
                          if not (self.path / folder / file).is_file()})
        if missing:
            raise VoiceprintError(
                f"{self.path}: voiceprints were made by model {stored}, not by model {self.fingerprint}, "
                f"and the enrolment audio of {len(missing)} user(s) is missing ({', '.join(map(repr, missing[:10]))}), "
                "so they cannot be re-embedded; restore their audio, or open the library with the old "
                "model and remove_user them")
        dim = None
        bar = tqdm(total=len(enrolments), desc="re-embedding voiceprints for the new model",
                   unit="enrolment", disable=not self.progress)
        with bar:
            for start in range(0, len(enrolments), REEMBED_BATCH):
                batch = enrolments[start:start + REEMBED_BATCH]
                waves = [load_audio(self.path / folder / file, target_sample_rate=self.sample_rate)
                         for _, _, folder, file in batch]
                vectors = np.asarray(self.embed_fn(waves), dtype=np.float32)
                if vectors.ndim != 2 or len(vectors) != len(batch) or not np.isfinite(vectors).all():
                    raise VoiceprintError(f"embed_fn returned {vectors.shape} {vectors.dtype} for "
                                          f"{len(batch)} waveforms; expected finite [{len(batch)}, E]")
                dim = vectors.shape[1]
                conn.executemany("UPDATE enrolments SET embedding = ? WHERE id = ?",
                                 [(v.tobytes(), row[0]) for v, row in zip(unit(vectors), batch)])
                bar.update(len(batch))
        set_meta(conn, "embd_dim", dim)
