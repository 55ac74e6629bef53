"""Diarization end to end: the predictor's API, the scripts as users run them, simulated
conversations, naming speakers from the library, and every bad input getting one clear error."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mvector.errors import AudioError, ConfigError, MVectorError
from mvector.inference.diarization.rttm import read_rttm
from mvector.inference.predictor import MVectorPredictor
from predict_helpers import DATA, ROOT, coloured_noise, dev_by_speaker, make_model_dir, write_wav

pytestmark = pytest.mark.integration

AMI = DATA / "diarization" / "ami"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
# senko 0.2.2 (the peer) on the 14 AMI excerpts, ±0.25 s collar, measured in the issue: with overlapped speech scored, and without.
PEER_DER, PEER_DER_NO_OVERLAP = 0.439, 0.317


def _run(*command):
    done = subprocess.run([sys.executable, *command], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("diarize") / "model")


@pytest.fixture(scope="module")
def default_predictor():
    with MVectorPredictor(audio_db_path=None) as predictor:
        yield predictor


def two_voices(seconds_each=3.0, turns=4):
    """Alternating stretches of two different coloured noises: ``(wav, [(start, end, who)])``."""
    voices = [coloured_noise(seconds_each, seed) for seed in (1, 2)]
    wav = np.concatenate([voices[i % 2] for i in range(turns)])
    return wav, [(i * seconds_each, (i + 1) * seconds_each, i % 2) for i in range(turns)]


def test_any_model_and_backend_diarizes_given_speech_regions(tiny_model):
    """The tiny random TDNN, through the torch backend and the default one, told where the speech is."""
    wav, turns = two_voices()
    for backend in ("torch", "auto"):
        predictor = MVectorPredictor(tiny_model, backend=backend)
        segments = predictor.diarize(wav, sample_rate=16000, num_speakers=2, timestamps=[(0.0, 12.0)])
        assert segments == sorted(segments) and segments[0].start == 0.0 and segments[-1].end == 12.0
        assert all(a.end <= b.start + 1e-9 for a, b in zip(segments, segments[1:]))
        assert {s.speaker for s in segments} == {"speaker-1", "speaker-2"}
        only_inside = predictor.diarize(wav, sample_rate=16000, timestamps=[(1.0, 2.5), (6.0, 8.0)])
        assert all(1.0 <= s.start and s.end <= 2.5 or 6.0 <= s.start and s.end <= 8.0 for s in only_inside)


def test_bad_arguments_and_audio_get_one_clear_error(tiny_model, tmp_path):
    predictor = MVectorPredictor(tiny_model)
    wav, _ = two_voices()
    with pytest.raises(ConfigError, match="num_speakers"):
        predictor.diarize(wav, sample_rate=16000, num_speakers=0)
    with pytest.raises(ConfigError, match="min_speakers .* more than max_speakers"):
        predictor.diarize(wav, sample_rate=16000, min_speakers=3, max_speakers=2)
    with pytest.raises(ConfigError, match="starts after the end"):
        predictor.diarize(wav, sample_rate=16000, timestamps=[(20.0, 30.0)])
    with pytest.raises(AudioError, match="silent"):
        predictor.diarize(np.zeros(16000 * 5, dtype=np.float32), sample_rate=16000)
    with pytest.raises(AudioError, match="too short"):
        predictor.diarize(coloured_noise(0.1, 3), sample_rate=16000)
    with pytest.raises(AudioError, match="no speech found long enough"):
        predictor.diarize(wav, sample_rate=16000, timestamps=[(1.0, 1.2)])
    with pytest.raises(AudioError, match="not found"):
        predictor.diarize(str(tmp_path / "missing.wav"))


def test_a_missing_optional_dependency_is_one_line_naming_the_extra(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    wav, _ = two_voices()
    with pytest.raises(MVectorError, match=r"needs scikit-learn: pip install 'mvector-sv\[diarization\]'"):
        MVectorPredictor(tiny_model).diarize(wav, sample_rate=16000, timestamps=[(0.0, 12.0)])


@pytest.mark.data
@pytest.mark.slow
def test_eval_script_beats_the_peer_on_the_ami_excerpts(tmp_path):
    """eval_diarization.py over all 14 real meeting excerpts, neither system told the speaker count."""
    hyp = tmp_path / "hyp.rttm"
    code, out, err = _run("eval_diarization.py", "--audio_dir", str(AMI), "--rttm", str(AMI / "reference.rttm"),
                          "--hyp_rttm", str(hyp))
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {p.stem for p in AMI.glob("*.flac")} | {"pooled"}
    pooled = rows["pooled"]
    der, no_overlap = float(pooled[1].rstrip("%")) / 100, float(pooled[-1].rstrip("%")) / 100
    assert der < PEER_DER and no_overlap < PEER_DER_NO_OVERLAP, out
    assert set(read_rttm(hyp)) == set(rows) - {"pooled"}


@pytest.mark.data
@pytest.mark.slow
def test_infer_script_writes_rttm_json_and_timelines(tmp_path):
    files = [str(AMI / "dev00.flac"), str(AMI / "trn03.flac")]
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(files) + "\n")
    code, out, err = _run("infer_diarization.py", "--list", str(listing), "--rttm", str(tmp_path / "out.rttm"),
                          "--json", str(tmp_path / "out.json"), "--plot", str(tmp_path / "timeline.png"))
    assert code == 0, err
    assert f"{files[0]}:" in out and "speaker-1" in out
    rttm = read_rttm(tmp_path / "out.rttm")
    recordings = json.loads((tmp_path / "out.json").read_text())["recordings"]
    assert set(rttm) == {r["uri"] for r in recordings} == {"dev00", "trn03"}
    for recording in recordings:
        assert recording["duration"] == 30.0
        assert [(s["start"], s["end"], s["speaker"]) for s in recording["segments"]] == \
            [(round(a, 3), round(b, 3), c) for a, b, c in rttm[recording["uri"]]]
        assert (tmp_path / f"timeline-{recording['uri']}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.data
def test_scripts_refuse_bad_input_in_one_line(tmp_path):
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16000 * 3, dtype=np.float32))
    bad_rttm = tmp_path / "bad.rttm"
    bad_rttm.write_text("SPEAKER trn00 1 x 1 <NA> <NA> a <NA> <NA>\n")
    missing_audio = tmp_path / "ref.rttm"
    missing_audio.write_text("SPEAKER nowhere 1 0 1 <NA> <NA> a <NA> <NA>\n")
    cases = [
        (("infer_diarization.py", str(tmp_path / "none.wav")), "not found"),
        (("infer_diarization.py", silent), "silent"),
        (("infer_diarization.py",), "give at least one recording"),
        (("infer_diarization.py", str(AMI / "trn00.flac"), "--num_speakers", "0"), "num_speakers must be"),
        (("eval_diarization.py", "--audio_dir", str(AMI), "--rttm", str(bad_rttm)), "bad.rttm:1: start and duration"),
        (("eval_diarization.py", "--audio_dir", str(AMI), "--rttm", str(missing_audio)), "no recording for 1 file"),
        (("eval_diarization.py", "--audio_dir", str(tmp_path / "nodir"), "--rttm", str(AMI / "reference.rttm")),
         "does not exist"),
        (("simulate_conversations.py", "--list", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "c")), "none.tsv"),
    ]
    for command, message in cases:
        code, _, err = _run(*command)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (command, err)


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    out = tmp_path_factory.mktemp("conversations")
    code, _, err = _run("simulate_conversations.py", "--list", str(DATA / "dev" / "list.tsv"), "--out", str(out),
                        "--n", "3", "--seed", "7", "--min_seconds", "40", "--max_seconds", "60")
    assert code == 0, err
    return out


@pytest.mark.data
@pytest.mark.slow
def test_simulated_conversations_are_reproducible_and_diarized_well(conversations, tmp_path, default_predictor):
    from mvector.apps.diarization import score_diarization
    from mvector.audio import audio_duration

    reference = read_rttm(conversations / "reference.rttm")
    assert sorted(reference) == ["conv000", "conv001", "conv002"]
    for uri, turns in reference.items():
        assert read_rttm(conversations / f"{uri}.rttm") == {uri: turns}
        assert 2 <= len({s for *_, s in turns}) <= 5 and 40 <= audio_duration(conversations / f"{uri}.wav") <= 70
        assert all(end - start <= 8.0 + 1e-6 for start, end, _ in turns)
    again = tmp_path / "again"
    code, _, err = _run("simulate_conversations.py", "--list", str(DATA / "dev" / "list.tsv"), "--out", str(again),
                        "--n", "3", "--seed", "7", "--min_seconds", "40", "--max_seconds", "60")
    assert code == 0, err
    assert (again / "conv001.wav").read_bytes() == (conversations / "conv001.wav").read_bytes()
    hypotheses = {uri: default_predictor.diarize(conversations / f"{uri}.wav") for uri in reference}
    durations = {uri: audio_duration(conversations / f"{uri}.wav") for uri in reference}
    assert score_diarization(reference, hypotheses, durations)["pooled"]["der"] < 0.10


@pytest.mark.data
@pytest.mark.slow
def test_speakers_take_their_enrolled_names(conversations, tmp_path):
    """Each conversation's speakers enrolled from recordings the conversation does not use: the
    clusters take their names; someone not enrolled stays unknown."""
    reference = read_rttm(conversations / "reference.rttm")["conv000"]
    speakers = sorted({s for *_, s in reference})
    by_speaker = dev_by_speaker()
    used = set()  # the conversation's utterances are not known here; enrol with three recordings each
    with MVectorPredictor(audio_db_path=str(tmp_path / "db")) as predictor:
        for speaker in speakers[1:]:
            for path in by_speaker[speaker][-3:]:
                predictor.register(str(path), speaker)
                used.add(path)
        segments = predictor.diarize(conversations / "conv000.wav", name_speakers=True)
    names = {s.speaker for s in segments}
    assert "unknown-1" in names and not any(n.startswith("speaker-") for n in names)

    def truth_at(t):
        return next((s for start, end, s in reference if start <= t <= end), None)

    named = [(s.end - s.start, truth_at((s.start + s.end) / 2) == s.speaker) for s in segments if not s.speaker.startswith("unknown")]
    assert sum(d for d, right in named if right) >= 0.9 * sum(d for d, _ in named)
    unknown = [truth_at((s.start + s.end) / 2) for s in segments if s.speaker == "unknown-1"]
    assert unknown.count(speakers[0]) >= 0.8 * len(unknown)
