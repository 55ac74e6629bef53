"""The voiceprint library's folder on disk: enrolment audio (one folder per user, named by a random
id), temporary names for writes in flight, erasures in progress, the quarantine for what the
database does not know, and the reserve that keeps erasure possible on a full disk."""
import contextlib
import io
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

from mvector.fileio import fsync_dir
from mvector.library.names import VoiceprintError


DB_FILE = "voiceprints.sqlite"
TMP_PREFIX = ".tmp-"
ERASING_PREFIX = ".erasing-"
QUARANTINE_DIR = ".quarantine"
# Space set aside so that erasing a user works on a full disk (erasure is a legal duty for biometric
# data, and SQLite needs room in its WAL to delete): released when a deletion finds the disk full,
# set aside again when space allows.
RESERVE_PREFIX = ".reserve-"
RESERVE_CHUNKS = 4
RESERVE_CHUNK_BYTES = 1 << 20
# Where the lock file cannot be held (no flock), a temporary audio file with no row is deleted only when
# this old: a younger one may be a registration still in flight in another process. With the lock held
# exclusively, none can be (writers hold it shared from their temporary file to its final name).
TMP_GRACE_SECONDS = 3600
AUDIO_SUFFIX = ".flac"
_ID = re.compile(r"[0-9a-f]{32}")
_AUDIO_NAME = re.compile(r"[0-9a-f]{32}" + re.escape(AUDIO_SUFFIX))


def library_exists(path) -> bool:
    """Whether ``path`` holds a voiceprint library (its database), as opposed to a mistyped folder; a
    database URL (PostgreSQL) is taken to, the database server being the judge."""
    return "://" in str(path) or (Path(path) / DB_FILE).is_file()


def encode_audio(wav: np.ndarray, sample_rate: int) -> io.BytesIO:
    """Enrolment audio as every store keeps it: 16-bit FLAC, clipped rather than let the encoder
    wrap loud samples around."""
    encoded = io.BytesIO()
    sf.write(encoded, np.clip(wav, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return encoded


class AudioFolder:
    """The files of the library at ``path``, whose audio is stored at ``sample_rate``."""

    def __init__(self, path: Path, sample_rate: int):
        self.path = path
        self.sample_rate = sample_rate

    def write_audio(self, path: Path, wav: np.ndarray) -> None:
        # Encoded in memory first: a write error (a full disk) inside the encoder's callbacks would be
        # swallowed there.
        encoded = encode_audio(wav, self.sample_rate)
        try:
            with open(path, "wb") as fh:
                fh.write(encoded.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            path.unlink(missing_ok=True)
            raise

    def place_audio(self, tmp: Path, folder: str, file: str) -> None:
        (self.path / folder).mkdir(exist_ok=True)
        os.replace(tmp, self.path / folder / file)
        fsync_dir(self.path / folder)

    def rename_folder(self, old: str, new: str) -> None:
        if (self.path / old).is_dir() and not (self.path / new).exists():
            os.replace(self.path / old, self.path / new)
            fsync_dir(self.path)

    def stored_audio(self) -> list:
        """User folders, erasures in progress and quarantined audio in the library folder."""
        names = [e for e in self.path.iterdir() if e.is_dir() and (
            _ID.fullmatch(e.name) or e.name.startswith(ERASING_PREFIX))]
        quarantine = self.path / QUARANTINE_DIR
        return names + (list(quarantine.iterdir()) if quarantine.is_dir() else [])

    def check_database_present(self) -> None:
        """A missing or empty database beside stored audio means the index of users was lost: opening a
        fresh library there would orphan everyone's enrolment audio."""
        db = self.path / DB_FILE
        if db.is_file() and db.stat().st_size > 0:
            return
        stored = self.stored_audio()
        if stored:
            state = "is empty (0 bytes)" if db.is_file() else "is missing"
            raise VoiceprintError(
                f"voiceprint library {self.path}: {DB_FILE} {state}, but the folder holds the enrolment audio "
                f"of {len(stored)} user folder(s); nothing was changed. Restore {DB_FILE} (with its -wal file) "
                f"from a backup, or move the library's folders elsewhere to start an empty library here")

    def quarantine(self, entry: Path, relative: str) -> None:
        target = self.path / QUARANTINE_DIR / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}")
        os.replace(entry, target)

    def restore_quarantined(self, folders: set, placed: dict) -> None:
        """Move quarantined audio back where the database (e.g. restored from a backup) expects it."""
        quarantine = self.path / QUARANTINE_DIR
        if not quarantine.is_dir():
            return
        for held in list(quarantine.iterdir()):
            if not (held.is_dir() and held.name in folders):
                continue
            for audio in list(held.iterdir()):
                if placed.get(audio.name) == held.name and not (self.path / held.name / audio.name).exists():
                    (self.path / held.name).mkdir(exist_ok=True)
                    os.replace(audio, self.path / held.name / audio.name)
            with contextlib.suppress(OSError):
                held.rmdir()  # only when everything went back
        with contextlib.suppress(OSError):
            quarantine.rmdir()

    def release_reserve(self) -> bool:
        """Free one chunk of the space set aside for erasures; False when none is left."""
        chunks = sorted(self.path.glob(RESERVE_PREFIX + "*"))
        if not chunks:
            return False
        chunks[-1].unlink()
        return True

    def set_reserve_aside(self) -> None:
        """Set aside the erasure reserve's missing chunks, as far as space allows (best effort)."""
        for index in range(RESERVE_CHUNKS):
            chunk = self.path / f"{RESERVE_PREFIX}{index}"
            if chunk.is_file() and chunk.stat().st_size == RESERVE_CHUNK_BYTES:
                continue
            try:
                with open(chunk, "wb") as fh:
                    fh.write(bytes(RESERVE_CHUNK_BYTES))
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError:
                chunk.unlink(missing_ok=True)
                return


    def sweep(self, folders: set, placed: dict, others_may_write: bool) -> tuple:
        """Finish what a killed process left (see mvector.library.store); quarantine, never delete,
        what the database does not know. ``folders``: the user folders the database knows; ``placed``:
        audio file -> its user's folder; ``others_may_write``: no exclusive lock keeps registrations
        out, so young temporary audio is left alone. Only names of the library's own patterns are
        touched. Returns how many unknown user folders and audio files were quarantined."""
        self.restore_quarantined(folders, placed)
        unknown_folders, unknown_files = 0, 0
        for entry in sorted(self.path.iterdir()):
            if entry.name.startswith(TMP_PREFIX) and _AUDIO_NAME.fullmatch(entry.name[len(TMP_PREFIX):]):
                file = entry.name[len(TMP_PREFIX):]
                if file in placed:
                    self.place_audio(entry, placed[file], file)
                elif not others_may_write or time.time() - entry.stat().st_mtime > TMP_GRACE_SECONDS:
                    entry.unlink(missing_ok=True)
            elif entry.name.startswith(ERASING_PREFIX) and _ID.fullmatch(entry.name[len(ERASING_PREFIX):]):
                folder = entry.name[len(ERASING_PREFIX):]
                if folder in folders:  # the erasure never committed
                    self.rename_folder(entry.name, folder)
                else:
                    shutil.rmtree(entry, ignore_errors=True)
            elif _ID.fullmatch(entry.name) and entry.is_dir():
                if entry.name not in folders:
                    self.quarantine(entry, entry.name)
                    unknown_folders += 1
                    continue
                for stray in list(entry.iterdir()):
                    if placed.get(stray.name) != entry.name:
                        self.quarantine(stray, f"{entry.name}/{stray.name}")
                        unknown_files += 1
        return unknown_folders, unknown_files
