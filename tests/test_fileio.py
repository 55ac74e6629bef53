"""mvector/fileio.py: list lines and their errors, directory fsync."""
import re

import pytest

from mvector.errors import ConfigError, MVectorError
from mvector.fileio import fsync_dir, read_list_lines

pytestmark = pytest.mark.unit


def test_read_list_lines_gives_the_lines_without_newlines(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.wav\t0\n\nb.wav\t1\r\n", encoding="utf-8")
    assert read_list_lines(path, "data list") == ["a.wav\t0", "", "b.wav\t1"]


def test_missing_undecodable_and_directory_lists_raise_the_given_error(tmp_path):
    missing = tmp_path / "absent.txt"
    with pytest.raises(MVectorError, match=f"^file list not found: {re.escape(str(missing))}$"):
        read_list_lines(missing, "file list")
    undecodable = tmp_path / "latin1.txt"
    undecodable.write_bytes("caf\u00e9.wav\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^cannot read data list {re.escape(str(undecodable))}: 'utf-8' codec can't decode"):
        read_list_lines(undecodable, "data list", ConfigError)
    # A directory's reason is the OS's words alone: the path is named once, not repeated by str(OSError).
    with pytest.raises(MVectorError, match=f"^cannot read trials file {re.escape(str(tmp_path))}: Is a directory$"):
        read_list_lines(tmp_path, "trials file")


def test_fsync_dir_accepts_a_directory_and_rejects_a_missing_one(tmp_path):
    fsync_dir(tmp_path)
    fsync_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "absent")
