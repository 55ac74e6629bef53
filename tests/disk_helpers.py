"""A small filesystem to fill, for the tests of what a full disk does."""
import contextlib
import subprocess

import pytest


@contextlib.contextmanager
def mounted_small_disk(mount, megabytes=16):
    """A tmpfs of ``megabytes`` mounted at ``mount`` (needs root and mount rights; skips otherwise)."""
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({done.stderr.strip() or 'not permitted'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder):
    """Fill the disk holding ``folder`` to the last byte."""
    with open(folder / f"filler-{len(list(folder.glob('filler-*')))}", "wb") as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(bytes(64 << 10))
                fh.flush()
    with contextlib.suppress(OSError), open(folder / f"tail-{len(list(folder.glob('tail-*')))}", "wb") as fh:
        while True:
            fh.write(b"x")
            fh.flush()
