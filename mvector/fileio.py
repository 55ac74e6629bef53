"""Small file helpers shared by the modules that read lists, hash files and write durably."""
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mvector.errors import MVectorError


CACHE_ENV = "MVECTOR_CACHE"


def cache_dir() -> Path:
    """Where mvector keeps what it can rebuild (the simulated RIR bank, models converted for OpenVINO,
    downloads): ``$MVECTOR_CACHE``, else ``~/.cache/mvector``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mvector")


def fsync_dir(path) -> None:
    """Flush a directory's entries, so a rename into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path, mode: str = "w"):
    """Write ``path`` whole or not at all: the handle yielded is a temporary file beside it, flushed to
    disk and renamed over ``path`` when the block ends without an error, and removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def file_sha256(path):
    """A sha256 ``hashlib`` object fed with the file's bytes, read in blocks (weights are megabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest


def read_list_lines(path, what: str, error: type = MVectorError) -> list[str]:
    """The lines of a UTF-8 text list; a missing or unreadable file raises ``error`` naming ``what`` and the path."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        # strerror, when there is one, is the reason without the path repeated.
        reason = getattr(exc, "strerror", None) or exc
        raise error(f"cannot read {what} {path}: {reason}") from None
