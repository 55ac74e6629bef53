"""Build the TAB-separated data lists training and evaluation read, from a corpus on disk.

Written into ``out_dir`` (all paths absolute):
- ``train_list.txt``: ``path<TAB>label<TAB>duration_seconds``, labels 0..N-1 over training speakers;
- ``enroll_list.txt`` / ``trials_list.txt``: the same columns for the evaluation speakers (their own
  labels): the enrolment utterance(s) of each speaker, and every other utterance to score against them;
- ``trials.tsv``: ``path1<TAB>path2<TAB>1|0`` (1 = same speaker);
- ``speakers.json`` / ``dev_speakers.json``: label -> speaker id, so ``num_speakers`` is never typed by hand.

Each corpus layout is a class in ``LAYOUTS`` that says whether a folder looks like it (``detect``)
and lists its utterances (``collect``). Every file is probed with ``audio_duration`` (header only,
in threads); unreadable files are skipped and reported, and trials that name them are dropped.
"""

import json
import os
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mvector.audio import AUDIO_EXTENSIONS, audio_duration
from mvector.errors import ConfigError, MVectorError
from mvector.fileio import atomic_file, read_list_lines
from mvector.lists import path_under, read_speaker_list, read_trials, write_rows
from mvector.registry import Registry

# A speaker model learns to tell speakers apart: a training set of one speaker teaches it nothing.
MIN_TRAIN_SPEAKERS = 2
# Generated trials keep every target pair and this many times as many random non-target pairs,
# the proportion of the shared dev trials.
NONTARGET_PER_TARGET = 10
# How many skipped file names a report shows; the rest are counted.
REPORT_NAMES = 5

LAYOUTS = Registry("data layout")


@dataclass
class Utterance:
    path: str
    speaker: str


@dataclass
class Corpus:
    """What a layout finds. ``trials`` is None when the corpus has no trial list: then trials are
    generated from enrol x test."""
    train: list
    enroll: list = field(default_factory=list)
    test: list = field(default_factory=list)
    trials: list | None = None


@dataclass
class DataListsReport:
    layout: str
    out_dir: str
    num_speakers: int
    num_train: int
    num_enroll: int
    num_test: int
    num_trials: int
    skipped: list  # (path, reason) of every unreadable file
    dropped_trials: int
    files: list

    def summary(self) -> str:
        lines = [
            f"layout '{self.layout}': {self.num_train} training utterances of {self.num_speakers} speakers",
            f"evaluation: {self.num_enroll} enrolment, {self.num_test} test utterances, {self.num_trials} trials",
        ]
        if self.skipped:
            names = "; ".join(f"{path} ({reason})" for path, reason in self.skipped[:REPORT_NAMES])
            more = f" and {len(self.skipped) - REPORT_NAMES} more" if len(self.skipped) > REPORT_NAMES else ""
            lines.append(f"skipped {len(self.skipped)} unreadable file(s): {names}{more}")
        if self.dropped_trials:
            lines.append(f"dropped {self.dropped_trials} trial(s) naming skipped files")
        lines.append("wrote " + ", ".join(self.files))
        return "\n".join(lines)


def default_data_root(script_dir) -> Path:
    """``../shared/data`` beside the checkout that holds ``script_dir``; an error if it is absent."""
    root = (Path(script_dir).resolve().parent / "shared" / "data")
    if not root.is_dir():
        raise ConfigError(f"no --data_root given and the default {root} does not exist; "
                          "pass --data_root DIR pointing at your corpus")
    return root


def create_data_lists(data_root, out_dir="dataset", layout="auto", train_dir=None, dev_dir=None,
                      num_threads=16) -> DataListsReport:
    """Find the corpus under ``data_root``, probe every file and write the lists into ``out_dir``."""
    # Absolute but not resolved: lists name files through the folders the user gave (a symlinked
    # ../shared stays symlinked), as trial lists written beside them do.
    root = Path(os.path.abspath(Path(data_root).expanduser()))
    if not root.is_dir():
        raise ConfigError(f"data_root {root} is not a directory")
    name = detect_layout(root) if layout == "auto" else layout
    corpus = LAYOUTS.get_class(name, where="--layout: ").collect(root, train_dir, dev_dir)
    if not corpus.train:
        raise MVectorError(f"no training audio found under {root} (layout '{name}')")

    durations, skipped = probe_durations(
        [u.path for u in corpus.train + corpus.enroll + corpus.test], num_threads)
    train = [u for u in corpus.train if u.path in durations]
    enroll = [u for u in corpus.enroll if u.path in durations]
    test = [u for u in corpus.test if u.path in durations]
    if not train:
        raise MVectorError(f"none of the {len(corpus.train)} training files under {root} is readable; "
                           f"first: {skipped[0][0]} ({skipped[0][1]})")
    speakers = {u.speaker for u in train}
    if len(speakers) < MIN_TRAIN_SPEAKERS:
        raise ConfigError(f"{root} (layout '{name}'): the training set has {len(speakers)} speaker "
                          f"({', '.join(sorted(speakers))}); a speaker model learns to tell speakers apart and "
                          f"needs at least {MIN_TRAIN_SPEAKERS}")

    trials = corpus.trials if corpus.trials is not None else generate_trials(enroll, test)
    kept_trials = [t for t in trials if t[0] in durations and t[1] in durations]

    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    out.mkdir(parents=True, exist_ok=True)
    train_labels = speaker_labels(train)
    files = [_write_list(out / "train_list.txt", train, train_labels, durations),
             _write_json(out / "speakers.json", train_labels)]
    eval_files = ("enroll_list.txt", "trials_list.txt", "trials.tsv", "dev_speakers.json")
    if enroll and test:
        dev_labels = speaker_labels(enroll + test)
        files += [_write_list(out / "enroll_list.txt", enroll, dev_labels, durations),
                  _write_list(out / "trials_list.txt", test, dev_labels, durations),
                  _write_trials(out / "trials.tsv", kept_trials),
                  _write_json(out / "dev_speakers.json", dev_labels)]
    else:
        # Lists left from an earlier run would pair this training set with another corpus's trials.
        for stale in eval_files:
            (out / stale).unlink(missing_ok=True)
        kept_trials = []
    return DataListsReport(layout=name, out_dir=str(out), num_speakers=len(train_labels), num_train=len(train),
                           num_enroll=len(enroll), num_test=len(test), num_trials=len(kept_trials),
                           skipped=skipped, dropped_trials=len(trials) - len(kept_trials) if enroll and test else 0,
                           files=files)


def detect_layout(root: Path) -> str:
    """The first layout (in registration order) that recognises ``root``; speaker folders otherwise."""
    for name, layout in LAYOUTS.items():
        if layout.detect(root):
            return name
    return "folders"


def probe_durations(paths, num_threads=16):
    """``({path: seconds}, [(path, reason), ...])`` from each file's header, in threads."""
    unique = list(dict.fromkeys(paths))

    def probe(path):
        if "\t" in path or "\n" in path:
            return path, None, "its path contains a TAB or newline, which the lists cannot hold"
        try:
            seconds = audio_duration(path)
        except MVectorError as error:
            return path, None, str(error).removeprefix(f"{path}: ")
        if not seconds > 0:
            return path, None, "has zero samples"
        return path, seconds, None

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        results = list(pool.map(probe, unique))
    durations = {path: seconds for path, seconds, _ in results if seconds is not None}
    skipped = [(path, reason) for path, seconds, reason in results if seconds is None]
    return durations, skipped


def speaker_labels(utterances) -> dict:
    """Contiguous labels over the sorted speaker ids: {speaker: label}."""
    return {speaker: label for label, speaker in enumerate(sorted({u.speaker for u in utterances}))}


def split_enroll_test(utterances, per_speaker=1):
    """The first ``per_speaker`` utterances of each speaker enrol it; the others are its tests."""
    seen = defaultdict(int)
    enroll, test = [], []
    for utterance in utterances:
        seen[utterance.speaker] += 1
        (enroll if seen[utterance.speaker] <= per_speaker else test).append(utterance)
    return enroll, test


def generate_trials(enroll, test, seed=0):
    """Enrolment x test pairs: all same-speaker pairs plus NONTARGET_PER_TARGET times as many
    different-speaker pairs drawn with a fixed seed (the full cross product grows too fast)."""
    targets = [(e.path, t.path, 1) for e in enroll for t in test if e.speaker == t.speaker]
    nontarget_count = sum(1 for e in enroll for t in test if e.speaker != t.speaker)
    wanted = min(nontarget_count, NONTARGET_PER_TARGET * max(1, len(targets)))
    picked = set(random.Random(seed).sample(range(nontarget_count), wanted))
    nontargets = []
    position = 0
    for e in enroll:
        for t in test:
            if e.speaker != t.speaker:
                if position in picked:
                    nontargets.append((e.path, t.path, 0))
                position += 1
    return targets + nontargets


def scan_speaker_folders(root: Path):
    """``root/<speaker>/**/<audio>``: one Utterance per file, the first folder level naming the speaker."""
    utterances = []
    for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(speaker_dir.rglob("*")):
            if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
                # Absolute but not resolved: trial lists name files through the same (maybe
                # symlinked) folders.
                utterances.append(Utterance(os.path.abspath(path), speaker_dir.name))
    return utterances


def _subdir(root: Path, given, default: str):
    """``given`` (absolute, or relative to root) or ``root/default``."""
    path = Path(given).expanduser() if given else Path(default)
    return Path(os.path.abspath(path if path.is_absolute() else root / path))


@LAYOUTS.register(name="shared")
class SharedLayout:
    """``train/list.tsv`` and ``dev/list.tsv`` (+ optional ``dev/trials.tsv``), paths relative to each set."""

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "train" / "list.tsv").is_file()

    @staticmethod
    def collect(root: Path, train_dir=None, dev_dir=None) -> Corpus:
        train_root = _subdir(root, train_dir, "train")
        if not (train_root / "list.tsv").is_file():
            raise ConfigError(f"shared layout: {train_root / 'list.tsv'} not found")
        corpus = Corpus(train=[Utterance(*row) for row in read_speaker_list(train_root / "list.tsv")])
        dev_root = _subdir(root, dev_dir, "dev")
        if (dev_root / "list.tsv").is_file():
            corpus.enroll, corpus.test = split_enroll_test([Utterance(*row) for row in read_speaker_list(dev_root / "list.tsv")])
            if (dev_root / "trials.tsv").is_file():
                corpus.trials = list(zip(*read_trials(dev_root / "trials.tsv")))
        elif dev_dir:
            raise ConfigError(f"--dev_dir: {dev_root / 'list.tsv'} not found")
        return corpus


@LAYOUTS.register(name="list")
class ListLayout:
    """One set with its own ``list.tsv`` (``relative/path<TAB>speaker_id``), like each set in
    ``../shared/data``: all of it is training data, and its ``trials.tsv``, when there is one, is
    not used (its speakers are the training speakers)."""

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "list.tsv").is_file()

    @staticmethod
    def collect(root: Path, train_dir=None, dev_dir=None) -> Corpus:
        if train_dir or dev_dir:
            raise ConfigError(f"list layout: {root / 'list.tsv'} is the whole set; --train_dir and --dev_dir "
                              "do not apply (use a folder with train/ and dev/ sets for both)")
        return Corpus(train=[Utterance(*row) for row in read_speaker_list(root / "list.tsv")])


@LAYOUTS.register(name="cnceleb")
class CNCelebLayout:
    """CN-Celeb1/2: ``<set>/data/<spk>/*.flac`` train; ``<set>/eval/{enroll,test}`` and
    ``eval/lists/trials.lst`` (``id00800-enroll test/id00800-x.flac 1``) evaluate. ``<set>`` is the
    root itself or any folder directly inside it (CN-Celeb_flac, CN-Celeb2_flac)."""

    @staticmethod
    def _sets(root: Path):
        return [d for d in [root] + sorted(p for p in root.iterdir() if p.is_dir())
                if (d / "data").is_dir() or (d / "eval" / "lists" / "trials.lst").is_file()]

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any((d / "eval" / "lists" / "trials.lst").is_file() for d in cls._sets(root))

    @classmethod
    def collect(cls, root: Path, train_dir=None, dev_dir=None) -> Corpus:
        sets = cls._sets(root)
        eval_dirs = [d / "eval" for d in sets if (d / "eval" / "lists" / "trials.lst").is_file()]
        corpus = Corpus(train=[])
        if eval_dirs:
            eval_dir = eval_dirs[0]
            corpus.enroll = [Utterance(os.path.abspath(p), p.stem.split("-enroll")[0])
                             for p in _audio_files(eval_dir / "enroll")]
            corpus.test = [Utterance(os.path.abspath(p), p.stem.split("-")[0]) for p in _audio_files(eval_dir / "test")]
            corpus.trials = cls._trials(eval_dir)
        held_out = {u.speaker for u in corpus.enroll}
        for data in (d / "data" for d in sets if (d / "data").is_dir()):
            corpus.train += [u for u in scan_speaker_folders(data) if u.speaker not in held_out]
        return corpus

    @staticmethod
    def _trials(eval_dir: Path):
        enroll_paths = {p.stem: os.path.abspath(p) for p in _audio_files(eval_dir / "enroll")}
        lists = eval_dir / "lists"
        trials = []
        for number, line in enumerate(read_list_lines(lists / "trials.lst", "CN-Celeb trial list", ConfigError), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[2] not in ("0", "1") or parts[0] not in enroll_paths:
                raise ConfigError(f"{lists / 'trials.lst'}:{number}: expected '<enroll id> test/<file> 1|0' "
                                  f"with an enrolment file in {eval_dir / 'enroll'}, got {line.strip()!r}")
            trials.append((enroll_paths[parts[0]], path_under(eval_dir, parts[1]), int(parts[2])))
        return trials


def _audio_files(folder: Path):
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


@LAYOUTS.register(name="voxceleb")
class VoxCelebLayout:
    """``vox1/wav/<id>/<yt>/*.wav`` and/or ``vox2/aac/<id>/<yt>/*.m4a``. With ``veri_test2.txt``
    (``1 id10270/x/00001.wav id10300/y/00003.wav``, in the root or vox1/) its speakers are held out
    for evaluation and everyone else trains; without it everything trains."""

    TRIAL_FILES = ("veri_test2.txt", "veri_test.txt")

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "vox1" / "wav").is_dir() or (root / "vox2" / "aac").is_dir()

    @classmethod
    def collect(cls, root: Path, train_dir=None, dev_dir=None) -> Corpus:
        vox1 = root / "vox1" / "wav"
        everyone = []
        for folder in (vox1, root / "vox2" / "aac"):
            if folder.is_dir():
                everyone += scan_speaker_folders(folder)
        trial_file = next((d / name for name in cls.TRIAL_FILES for d in (root, root / "vox1")
                           if (d / name).is_file()), None)
        if trial_file is None:
            return Corpus(train=everyone)
        trials = []
        for number, line in enumerate(read_list_lines(trial_file, "VoxCeleb trial list", ConfigError), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise ConfigError(f"{trial_file}:{number}: expected '1|0 id/yt/file.wav id/yt/file.wav', "
                                  f"got {line.strip()!r}")
            trials.append((path_under(vox1, parts[1]), path_under(vox1, parts[2]), int(parts[0])))
        test_speakers = {Path(p).relative_to(vox1).parts[0] for a, b, _ in trials for p in (a, b)}
        dev = [u for u in everyone if u.speaker in test_speakers and u.path.startswith(str(vox1))]
        enroll, test = split_enroll_test(dev)
        return Corpus(train=[u for u in everyone if u.speaker not in test_speakers],
                      enroll=enroll, test=test, trials=trials)


@LAYOUTS.register(name="folders")
class SpeakerFolderLayout:
    """``ROOT/<speaker>/**/<audio>`` trains. With both ``ROOT/train`` and ``ROOT/dev`` (or
    --train_dir / --dev_dir) those are the two trees, and dev's speakers are evaluated."""

    @staticmethod
    def detect(root: Path) -> bool:
        return True

    @staticmethod
    def collect(root: Path, train_dir=None, dev_dir=None) -> Corpus:
        split = (root / "train").is_dir() and (root / "dev").is_dir()
        train_root = _subdir(root, train_dir, "train") if train_dir or split else root
        dev_root = _subdir(root, dev_dir, "dev") if dev_dir or split else None
        for what, folder in (("train", train_root), ("dev", dev_root)):
            if folder is not None and not folder.is_dir():
                raise ConfigError(f"--{what}_dir: {folder} is not a directory")
        corpus = Corpus(train=scan_speaker_folders(train_root))
        if dev_root is not None:
            corpus.enroll, corpus.test = split_enroll_test(scan_speaker_folders(dev_root))
        return corpus


def _write_list(path: Path, utterances, labels: dict, durations: dict) -> str:
    return write_rows(path, ((u.path, labels[u.speaker], f"{durations[u.path]:.3f}") for u in utterances))


def _write_trials(path: Path, trials) -> str:
    return write_rows(path, ((a, b, int(label)) for a, b, label in trials))


def _write_json(path: Path, labels: dict) -> str:
    by_label = {str(label): speaker for speaker, label in labels.items()}
    with atomic_file(path) as fh:
        fh.write(json.dumps(by_label, ensure_ascii=False, indent=1) + "\n")
    return str(path)
