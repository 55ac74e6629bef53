"""The one list module: one path rule for every list, one error per malformed row, atomic writes."""
import os

import pytest

from mvector.errors import ConfigError
from mvector.fileio import atomic_file
from mvector.lists import (read_data_list, read_labelled_list, read_loss_file, read_path_list, read_speaker_list,
                           read_trials, write_loss_file)

pytestmark = pytest.mark.unit


def test_every_reader_resolves_relative_paths_against_the_lists_folder(tmp_path, monkeypatch):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("a.wav\t0\t1.5\n/abs/b.wav\t1\n", encoding="utf-8")
    (lists / "dev.tsv").write_text("sub/a.wav\tspk\n", encoding="utf-8")
    (lists / "trials.tsv").write_text("../x.wav\ty.wav\t1\n", encoding="utf-8")
    (lists / "files.txt").write_text("a.wav\tignored\textra\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # a relative list path, read from elsewhere, means the same files
    expected_a = os.path.join(lists, "a.wav")
    assert read_data_list("lists/train.txt") == [(expected_a, 0, 1.5), ("/abs/b.wav", 1, None)]
    assert read_speaker_list("lists/dev.tsv") == [(os.path.join(lists, "sub", "a.wav"), "spk")]
    assert read_labelled_list(lists / "dev.tsv") == ([os.path.join(lists, "sub", "a.wav")], ["spk"], {})
    paths1, paths2, labels = read_trials("lists/trials.tsv")
    assert (paths1, paths2, labels.tolist()) == ([str(tmp_path / "x.wav")], [os.path.join(lists, "y.wav")], [True])
    assert read_path_list("lists/files.txt") == [expected_a]


def test_a_loss_file_round_trips_its_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    audio = read_data_list(_write(tmp_path / "train.txt", "a.wav\t0\n"))[0][0]
    write_loss_file([(audio, 0, 0.25)], "out/losses.tsv")
    assert read_loss_file("out/losses.tsv") == {audio: 0.25}


@pytest.mark.parametrize("reader, text, problem", [
    (read_data_list, "a.wav\n", r"x.txt:1: expected path<TAB>label"),
    (read_data_list, "a.wav\t-1\n", r"x.txt:1: label must be an integer >= 0"),
    (read_data_list, "a.wav\t0\tnan\n", r"x.txt:1: duration must be a number"),
    (read_data_list, "\tspeaker\n", r"x.txt:1: expected"),
    (read_speaker_list, "a.wav\tspk\textra\n", r"x.txt:1: expected relative/path<TAB>speaker_id"),
    (read_trials, "a.wav\tb.wav\tyes\n", r"x.txt:1: trial label must be 1"),
    (read_loss_file, "a.wav\t0\tinf\n", r"x.txt:1: loss must be a finite number"),
    (read_path_list, "\n\n", r"file list .*x.txt is empty"),
])
def test_a_malformed_list_names_its_file_and_line(tmp_path, reader, text, problem):
    with pytest.raises(ConfigError, match=problem):
        reader(_write(tmp_path / "x.txt", text))


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = _write(tmp_path / "list.txt", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["list.txt"]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path
