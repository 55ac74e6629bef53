"""create_data.py and mvector/training/corpus.py: the shared corpus, speaker folders, CN-Celeb and VoxCeleb layouts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from mvector.lists import read_speaker_list
from mvector.training.corpus import NONTARGET_PER_TARGET, Utterance, create_data_lists, generate_trials
from mvector.errors import ConfigError, MVectorError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SR = 16000


def tone(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def write_audio(path: Path, seconds=0.6, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".m4a":
        with av.open(str(path), "w", format="mp4") as container:
            stream = container.add_stream("aac", rate=SR, layout="mono")
            frame = av.AudioFrame.from_ndarray(tone(seconds, seed)[None, :], format="flt", layout="mono")
            frame.sample_rate = SR
            for packet in list(stream.encode(frame)) + list(stream.encode(None)):
                container.mux(packet)
    else:
        sf.write(path, tone(seconds, seed), SR)
    return path


def read_rows(path: Path):
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def check_list(path: Path, expected_speakers=None):
    """Absolute existing paths, integer labels 0..N-1 all used, positive durations; returns rows."""
    rows = read_rows(path)
    assert rows and all(len(r) == 3 for r in rows)
    assert all(os.path.isabs(r[0]) and os.path.isfile(r[0]) for r in rows)
    labels = sorted({int(r[1]) for r in rows})
    assert labels == list(range(len(labels)))
    assert all(float(r[2]) > 0 for r in rows)
    if expected_speakers is not None:
        assert len(labels) == expected_speakers
    return rows


@pytest.mark.slow
@pytest.mark.data
def test_shared_corpus(tmp_path):
    report = create_data_lists(SHARED, tmp_path, layout="auto")
    assert report.layout == "shared" and report.skipped == []
    train = check_list(tmp_path / "train_list.txt", expected_speakers=1038)
    assert len(train) == 5880 == report.num_train
    speakers = json.loads((tmp_path / "speakers.json").read_text())
    assert len(speakers) == 1038
    # The map agrees with the source list: every path's label names its speaker.
    source = {str(SHARED / "train" / rel): spk for rel, spk in read_rows(SHARED / "train" / "list.tsv")}
    assert all(speakers[label] == source[path] for path, label, _ in train)

    enroll = check_list(tmp_path / "enroll_list.txt")
    test = check_list(tmp_path / "trials_list.txt")
    dev_speakers = len(json.loads((tmp_path / "dev_speakers.json").read_text()))
    assert len(enroll) == dev_speakers == 47 and len(enroll) + len(test) == 774
    assert {r[1] for r in enroll} == {r[1] for r in test}

    trials = read_rows(tmp_path / "trials.tsv")
    source_trials = read_rows(SHARED / "dev" / "trials.tsv")
    assert len(trials) == len(source_trials) == report.num_trials
    assert all(os.path.isabs(a) and os.path.isfile(a) and os.path.isfile(b) and label in ("0", "1")
               for a, b, label in trials[:2000])
    assert [t[2] for t in trials] == [t[2] for t in source_trials]
    assert trials[0][0] == str(SHARED / "dev" / source_trials[0][0])


def test_speaker_folders_skip_corrupt_file(tmp_path):
    root = tmp_path / "corpus"
    for spk in ("alice", "bob", "carol"):
        for i in range(2):
            write_audio(root / spk / "session1" / f"{i}.wav", seed=i)
    write_audio(root / "bob" / "extra.flac", seed=7)
    (root / "carol" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (root / "carol" / "notes.txt").write_text("not audio")
    out = tmp_path / "lists"

    report = create_data_lists(root, out, layout="auto")
    assert report.layout == "folders"
    assert [Path(p).name for p, _ in report.skipped] == ["broken.wav"]
    assert "skipped 1 unreadable file(s)" in report.summary() and "broken.wav" in report.summary()
    rows = check_list(out / "train_list.txt", expected_speakers=3)
    assert len(rows) == 7
    speakers = json.loads((out / "speakers.json").read_text())
    assert speakers == {"0": "alice", "1": "bob", "2": "carol"}
    assert all(speakers[label] == Path(path).relative_to(root).parts[0] for path, label, _ in rows)
    # No dev set: no evaluation lists (and none left from before).
    assert not (out / "trials.tsv").exists() and report.num_trials == 0


def test_speaker_folders_with_dev_split_generate_trials(tmp_path):
    for spk in ("a", "b"):
        for i in range(2):
            write_audio(tmp_path / "train" / spk / f"{i}.wav", seed=i)
    for spk in ("x", "y", "z"):
        for i in range(3):
            write_audio(tmp_path / "dev" / spk / f"{i}.flac", seed=i)
    (tmp_path / "out" ).mkdir()
    (tmp_path / "out" / "trials.tsv").write_text("stale\n")
    report = create_data_lists(tmp_path, tmp_path / "out", layout="folders")
    check_list(tmp_path / "out" / "train_list.txt", expected_speakers=2)
    enroll = check_list(tmp_path / "out" / "enroll_list.txt", expected_speakers=3)
    test = check_list(tmp_path / "out" / "trials_list.txt", expected_speakers=3)
    assert [Path(r[0]).name for r in enroll] == ["0.flac"] * 3 and len(test) == 6
    trials = read_rows(tmp_path / "out" / "trials.tsv")
    # 3 speakers x 2 tests = 6 target pairs; all 12 non-target pairs (fewer than 10 x 6).
    assert sum(t[2] == "1" for t in trials) == 6 and sum(t[2] == "0" for t in trials) == 12
    assert report.num_trials == 18


def test_cnceleb_layout(tmp_path):
    cn1, cn2 = tmp_path / "CN-Celeb_flac", tmp_path / "CN-Celeb2_flac"
    for spk in ("id00000", "id00001"):
        for i in range(2):
            write_audio(cn1 / "data" / spk / f"interview-01-00{i}.flac", seed=i)
    write_audio(cn2 / "data" / "id10001" / "vlog-01-001.flac")
    for spk in ("id00800", "id00801"):
        write_audio(cn1 / "eval" / "enroll" / f"{spk}-enroll.flac", seconds=1.0)
        write_audio(cn1 / "eval" / "test" / f"{spk}-singing-01-001.flac")
    lists = cn1 / "eval" / "lists"
    lists.mkdir(parents=True)
    (lists / "trials.lst").write_text(
        "id00800-enroll test/id00800-singing-01-001.flac 1\n"
        "id00800-enroll test/id00801-singing-01-001.flac 0\n"
        "id00801-enroll test/id00801-singing-01-001.flac 1\n")
    out = tmp_path / "out"
    report = create_data_lists(tmp_path, out)
    assert report.layout == "cnceleb"
    train = check_list(out / "train_list.txt", expected_speakers=3)
    assert len(train) == 5
    assert set(json.loads((out / "speakers.json").read_text()).values()) == {"id00000", "id00001", "id10001"}
    enroll = check_list(out / "enroll_list.txt", expected_speakers=2)
    assert [Path(r[0]).name for r in enroll] == ["id00800-enroll.flac", "id00801-enroll.flac"]
    trials = read_rows(out / "trials.tsv")
    assert trials[1] == [str(cn1 / "eval" / "enroll" / "id00800-enroll.flac"),
                         str(cn1 / "eval" / "test" / "id00801-singing-01-001.flac"), "0"]


def test_voxceleb_layout(tmp_path):
    # vox1 is a symlink to storage elsewhere: list and trial paths must still agree.
    (tmp_path / "storage").mkdir()
    (tmp_path / "vox1").symlink_to(tmp_path / "storage")
    vox1, vox2 = tmp_path / "vox1" / "wav", tmp_path / "vox2" / "aac"
    for spk in ("id10270", "id10271"):
        for yt, i in (("ytA", 1), ("ytA", 2), ("ytB", 3)):
            write_audio(vox1 / spk / yt / f"0000{i}.wav", seed=i)
    write_audio(vox1 / "id10001" / "ytC" / "00001.wav")
    write_audio(vox2 / "id00012" / "ytD" / "00001.m4a")
    write_audio(vox2 / "id00012" / "ytD" / "00002.m4a", seed=3)
    (tmp_path / "vox1" / "veri_test2.txt").write_text(
        "1 id10270/ytA/00001.wav id10270/ytB/00003.wav\n0 id10270/ytA/00001.wav id10271/ytA/00002.wav\n")
    out = tmp_path / "out"
    report = create_data_lists(tmp_path, out)
    assert report.layout == "voxceleb"
    train = check_list(out / "train_list.txt", expected_speakers=2)
    assert set(json.loads((out / "speakers.json").read_text()).values()) == {"id10001", "id00012"}
    assert sum(r[0].endswith(".m4a") for r in train) == 2
    enroll = check_list(out / "enroll_list.txt", expected_speakers=2)
    assert len(enroll) == 2 and len(read_rows(out / "trials_list.txt")) == 4
    assert report.num_trials == 2 and report.dropped_trials == 0
    assert read_rows(out / "trials.tsv") == [
        [str(vox1 / "id10270/ytA/00001.wav"), str(vox1 / "id10270/ytB/00003.wav"), "1"],
        [str(vox1 / "id10270/ytA/00001.wav"), str(vox1 / "id10271/ytA/00002.wav"), "0"]]


def test_generate_trials_keeps_targets_and_samples_nontargets():
    enroll = [Utterance(f"e{s}", f"s{s}") for s in range(30)]
    test = [Utterance(f"t{s}_{i}", f"s{s}") for s in range(30) for i in range(2)]
    trials = generate_trials(enroll, test)
    targets = [t for t in trials if t[2] == 1]
    nontargets = [t for t in trials if t[2] == 0]
    assert len(targets) == 60 and all(a[1:] == b[1:b.index("_")] for a, b, _ in targets)
    assert len(nontargets) == NONTARGET_PER_TARGET * 60 == len(set(nontargets))
    assert all(a[1:] != b[1:b.index("_")] for a, b, _ in nontargets)
    assert generate_trials(enroll, test) == trials  # fixed seed


def test_malformed_speaker_list_names_file_and_line(tmp_path):
    bad = tmp_path / "list.tsv"
    bad.write_text("a.wav\tspk\nb.wav spk\n")
    with pytest.raises(ConfigError, match=r"list.tsv:2"):
        read_speaker_list(bad)


def test_errors_for_bad_roots(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        create_data_lists(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown data layout 'kaldi'"):
        create_data_lists(tmp_path, tmp_path / "out", layout="kaldi")
    (tmp_path / "spk").mkdir()
    with pytest.raises(MVectorError, match="no training audio"):
        create_data_lists(tmp_path, tmp_path / "out")


def test_cli(tmp_path):
    for spk in ("a", "b"):
        write_audio(tmp_path / "corpus" / spk / "x.wav")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "create_data.py"), "--data_root", str(tmp_path / "corpus"),
                           "--out_dir", "lists"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 training utterances of 2 speakers" in done.stdout
    check_list(tmp_path / "lists" / "train_list.txt", expected_speakers=2)
    failed = subprocess.run([sys.executable, str(REPO / "create_data.py"), "--data_root", str(tmp_path / "none")],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "is not a directory" in failed.stderr and "Traceback" not in failed.stderr


def test_a_set_with_its_own_list_is_read_as_such_and_one_speaker_is_refused(tmp_path):
    corpus = tmp_path / "set"
    for speaker, count in (("a", 2), ("b", 1)):
        for i in range(count):
            write_audio(corpus / "wav" / speaker / f"{i}.wav", seed=i)
    (corpus / "list.tsv").write_text("wav/a/0.wav\tspk_a\nwav/a/1.wav\tspk_a\nwav/b/0.wav\tspk_b\n", encoding="utf-8")
    report = create_data_lists(corpus, tmp_path / "lists")
    assert report.layout == "list" and report.num_train == 3
    assert set(json.loads((tmp_path / "lists" / "speakers.json").read_text()).values()) == {"spk_a", "spk_b"}
    (corpus / "list.tsv").write_text("wav/a/0.wav\tspk_a\nwav/a/1.wav\tspk_a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"has 1 speaker \(spk_a\).*at least 2"):
        create_data_lists(corpus, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_lists_name_files_through_a_symlinked_root(tmp_path):
    real = tmp_path / "real"
    for speaker in ("a", "b"):
        write_audio(real / speaker / "x.wav")
    link = tmp_path / "link"
    link.symlink_to(real)
    create_data_lists(link, tmp_path / "lists", layout="folders")
    paths = [row.split("\t")[0] for row in (tmp_path / "lists" / "train_list.txt").read_text().splitlines()]
    assert paths and all(p.startswith(str(link) + os.sep) for p in paths)
