"""Conversations with known turns, built from a corpus list, for tuning and scoring diarization on
speakers of one's own data (``simulate_conversations.py``).

Each conversation takes 2-5 speakers of one corpus (a list entry's first folder) and strings whole
utterances of theirs into turns, each cut to at most ``max_turn`` seconds, with a pause between
turns and now and then a turn that starts before the previous one ends. Utterances are trimmed of
their leading and trailing silence first, so the reference RTTM marks speech, not room tone.
"""
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from mvector.audio import load_audio, vad_trim
from mvector.errors import ConfigError
from mvector.fileio import atomic_file
from mvector.inference.diarization.rttm import write_rttm
from mvector.lists import read_speaker_list

SAMPLE_RATE = 16000
# A mixture's peak is scaled to this when the sum of overlapping turns would clip.
PEAK = 0.95


@dataclass(frozen=True)
class ConversationPlan:
    min_speakers: int = 2
    max_speakers: int = 5
    min_seconds: float = 60.0
    max_seconds: float = 120.0
    max_turn: float = 8.0
    min_pause: float = 0.1
    max_pause: float = 1.0
    overlap_share: float = 0.1
    max_overlap: float = 1.0

    def __post_init__(self):
        if not 1 <= self.min_speakers <= self.max_speakers:
            raise ConfigError(f"speakers must satisfy 1 <= min <= max, got {self.min_speakers}-{self.max_speakers}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ConfigError(f"durations must satisfy 0 < min <= max, got {self.min_seconds}-{self.max_seconds}")
        if not 0 <= self.overlap_share <= 1 or not 0 <= self.min_pause <= self.max_pause or self.max_turn <= 0:
            raise ConfigError("overlap_share must be in [0, 1], pauses 0 <= min <= max, max_turn > 0")


def corpus_speakers(list_path) -> dict:
    """``{corpus: {speaker: [paths]}}``: a corpus is the first folder of a list entry."""
    corpora = defaultdict(lambda: defaultdict(list))
    list_folder = Path(list_path).resolve().parent
    for path, speaker in read_speaker_list(list_path):
        relative = Path(path).resolve().relative_to(list_folder) if Path(path).is_absolute() else Path(path)
        corpus = relative.parts[0] if len(relative.parts) > 1 else "."
        corpora[corpus][speaker].append(path)
    return {corpus: dict(speakers) for corpus, speakers in corpora.items()}


def simulate_conversations(list_path, out_dir, n: int = 20, seed: int = 0, plan: ConversationPlan = None,
                           progress: bool = True) -> Path:
    """Write ``n`` conversations ``conv000.wav`` ... with ``conv000.rttm`` beside each and all of
    them in ``reference.rttm``; returns the output folder."""
    plan = plan or ConversationPlan()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be an integer >= 1, got {n!r}")
    corpora = {c: s for c, s in corpus_speakers(list_path).items() if len(s) >= plan.min_speakers}
    if not corpora:
        raise ConfigError(f"{list_path}: no corpus in it has {plan.min_speakers} or more speakers")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = sorted(corpora)
    weights = [len(corpora[c]) for c in names]  # a corpus with more speakers hosts more conversations
    references = {}
    for index in tqdm(range(n), desc="conversations", unit="conv", disable=not progress):
        corpus = rng.choices(names, weights)[0]
        wav, turns = _conversation(corpora[corpus], plan, rng)
        uri = f"conv{index:03d}"
        with atomic_file(out_dir / f"{uri}.wav", "wb") as fh:
            sf.write(fh, wav, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        write_rttm(out_dir / f"{uri}.rttm", {uri: turns})
        references[uri] = turns
    write_rttm(out_dir / "reference.rttm", references)
    return out_dir


def _conversation(speakers: dict, plan: ConversationPlan, rng: random.Random):
    count = rng.randint(plan.min_speakers, min(plan.max_speakers, len(speakers)))
    chosen = rng.sample(sorted(speakers), count)
    unused = {s: rng.sample(speakers[s], len(speakers[s])) for s in chosen}
    target = rng.uniform(plan.min_seconds, plan.max_seconds)
    pieces, turns, cursor, previous = [], [], 0.0, None
    while cursor < target:
        # Everyone speaks once before anyone twice; after that, anyone but the last speaker.
        silent = [s for s in chosen if s not in {t[2] for t in turns}]
        speaker = rng.choice(silent or [s for s in chosen if s != previous] or chosen)
        if not unused[speaker]:
            unused[speaker] = rng.sample(speakers[speaker], len(speakers[speaker]))
        utterance = vad_trim(load_audio(unused[speaker].pop()), SAMPLE_RATE)
        longest = round(plan.max_turn * SAMPLE_RATE)
        if len(utterance) > longest:
            start = rng.randrange(len(utterance) - longest + 1)
            utterance = utterance[start: start + longest]
        if turns and rng.random() < plan.overlap_share:
            begin = max(turns[-1][0], cursor - rng.uniform(0, plan.max_overlap))
        else:
            begin = cursor + (rng.uniform(plan.min_pause, plan.max_pause) if turns else 0.0)
        end = begin + len(utterance) / SAMPLE_RATE
        pieces.append((round(begin * SAMPLE_RATE), utterance))
        turns.append((begin, end, speaker))
        cursor, previous = max(cursor, end), speaker
    wav = np.zeros(max(offset + len(u) for offset, u in pieces), dtype=np.float32)
    for offset, utterance in pieces:
        wav[offset: offset + len(utterance)] += utterance
    peak = float(np.max(np.abs(wav)))
    if peak > PEAK:
        wav *= PEAK / peak
    return wav, turns
