"""Small file helpers shared by the modules that write durably."""
import os


def fsync_dir(path) -> None:
    """Flush a directory's entries, so a rename into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

