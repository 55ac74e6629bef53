"""The pieces of diarization, each on synthetic input: clustering, speech detection, spans, RTTM and DER."""
import numpy as np
import pytest

from mvector.errors import ConfigError
from mvector.inference.diarization import Diarizer, SpeakerClustering, SpeechDetector
from mvector.inference.diarization.clustering import check_speaker_counts
from mvector.inference.diarization.pipeline import _checked_timestamps, _label_spans, _merge_spans
from mvector.inference.diarization.rttm import read_rttm, rttm_lines, write_rttm

pytestmark = pytest.mark.unit


def speaker_embeddings(counts, dim=64, spread=0.35, seed=0):
    """Unit vectors scattered around one random direction per speaker: ``(embeddings, truth)``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(counts), dim))
    rows, truth = [], []
    for speaker, count in enumerate(counts):
        rows.append(centres[speaker] / np.linalg.norm(centres[speaker]) + spread * rng.standard_normal((count, dim)) / np.sqrt(dim))
        truth += [speaker] * count
    embeddings = np.concatenate(rows)
    return (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32), np.array(truth)


def same_partition(labels, truth) -> bool:
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth)}
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


@pytest.mark.parametrize("counts", [[12, 9], [15, 10, 8], [30, 25, 20, 12], [60, 40, 30]])
def test_clustering_finds_the_speakers_and_their_number(counts):
    embeddings, truth = speaker_embeddings(counts)
    labels = SpeakerClustering()(embeddings)
    assert same_partition(labels, truth), (counts, np.bincount(labels))


def test_both_methods_are_exercised_and_agree():
    embeddings, truth = speaker_embeddings([30, 25, 20])
    spectral = SpeakerClustering(spectral_min_windows=2)(embeddings)
    agglomerative = SpeakerClustering(spectral_min_windows=10**6)(embeddings)
    assert same_partition(spectral, truth) and same_partition(agglomerative, truth)


def test_more_windows_than_clustered_points_still_get_their_speakers():
    """Turns of three speakers, 600 windows clustered as at most 100 averaged points."""
    embeddings, truth = speaker_embeddings([200, 200, 200])
    order = np.concatenate([np.arange(start, start + 40) for turn in range(5) for start in (turn * 40, 200 + turn * 40, 400 + turn * 40)])
    labels = SpeakerClustering(max_points=100)(embeddings[order])
    assert same_partition(labels, truth[order])


def test_a_given_number_of_speakers_is_obeyed():
    embeddings, _ = speaker_embeddings([20, 20, 20])
    assert len(set(SpeakerClustering()(embeddings, num_speakers=2).tolist())) == 2
    assert len(set(SpeakerClustering()(embeddings, num_speakers=5).tolist())) == 5
    assert len(set(SpeakerClustering()(embeddings, max_speakers=1).tolist())) == 1
    assert len(set(SpeakerClustering()(embeddings, min_speakers=4).tolist())) >= 4


def test_labels_follow_first_appearance():
    embeddings, _ = speaker_embeddings([10, 10])
    labels = SpeakerClustering()(embeddings[::-1].copy())
    assert labels[0] == 0 and set(labels.tolist()) == {0, 1}


def test_one_window_is_one_speaker():
    embeddings, _ = speaker_embeddings([1])
    assert SpeakerClustering()(embeddings).tolist() == [0]


@pytest.mark.parametrize("counts, message", [((0, 1, None), "num_speakers"), ((None, 0, None), "min_speakers"),
                                             ((None, 3, 2), "more than max_speakers"), ((2.5, 1, None), "num_speakers"),
                                             ((None, True, None), "min_speakers")])
def test_bad_speaker_counts_are_named(counts, message):
    with pytest.raises(ConfigError, match=message):
        check_speaker_counts(*counts)


def test_energy_detector_finds_loud_stretches():
    rate = 16000
    rng = np.random.default_rng(0)
    wav = 0.001 * rng.standard_normal(10 * rate).astype(np.float32)
    for start, end in ((1.0, 3.0), (5.0, 5.6), (7.0, 9.0)):
        first, last = int(start * rate), int(end * rate)
        wav[first:last] += 0.3 * np.sin(np.arange(last - first) * 0.05)
    found = SpeechDetector(pad=0.0).regions(wav, rate)
    assert len(found) == 3
    for (start, end), (found_start, found_end) in zip(((1.0, 3.0), (5.0, 5.6), (7.0, 9.0)), found):
        assert abs(found_start - start) < 0.05 and abs(found_end - end) < 0.05


def test_windows_cover_each_region():
    diarizer = Diarizer()
    windows = diarizer._windows([(0.0, 0.3), (1.0, 2.0), (3.0, 6.2)])
    assert (1.0, 2.0) in windows  # shorter than a window: one window, the whole region
    long = [w for w in windows if w[0] >= 3.0]
    assert long[0][0] == 3.0 and abs(long[-1][1] - 6.2) < 1e-9 and all(abs(e - s - 1.5) < 1e-9 for s, e in long)
    assert all(s >= 1.0 for s, _ in windows)  # the 0.3 s region is too short to embed


def test_spans_split_between_window_centres_and_merge():
    regions = [(0.0, 3.0), (4.0, 4.2)]
    windows = [(0.0, 1.5), (0.75, 2.25), (1.5, 3.0)]
    spans = _label_spans(regions, windows, np.array([0, 0, 1]))
    assert spans == [(0.0, 1.125, 0), (1.125, 1.875, 0), (1.875, 3.0, 1), (4.0, 4.2, 1)]
    assert _merge_spans(spans) == [(0.0, 1.875, 0), (1.875, 3.0, 1), (4.0, 4.2, 1)]


def test_timestamps_are_checked_and_sorted():
    assert _checked_timestamps([(5, 6), (1, 2), (1.5, 3)], 10.0, "x") == [(1.0, 3.0), (5.0, 6.0)]
    assert _checked_timestamps([(8, 12)], 10.0, "x") == [(8.0, 10.0)]
    for bad, message in (([(2, 1)],"0 <= start < end"), ([(11, 12)], "after the end"), ([(1,)], "pairs"), (["ab"], "pairs")):
        with pytest.raises(ConfigError, match=message):
            _checked_timestamps(bad, 10.0, "x")


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="min_window"):
        Diarizer(min_window=0.1)
    with pytest.raises(ConfigError, match="hop"):
        Diarizer(hop=2.0)


def test_rttm_round_trip(tmp_path):
    segments = [(0.5, 1.25, "alice"), (1.25, 3.0, "bob smith")]
    path = tmp_path / "out.rttm"
    write_rttm(path, {"meeting": segments})
    assert rttm_lines("meeting", segments)[0] == "SPEAKER meeting 1 0.500 0.750 <NA> <NA> alice <NA> <NA>\n"
    assert read_rttm(path) == {"meeting": [(0.5, 1.25, "alice"), (1.25, 3.0, "bob_smith")]}


@pytest.mark.parametrize("text, message", [
    ("SPEAKER a 1 0.0 1.0\n", "at least 8 fields"),
    ("SPEAKER a 1 zero 1.0 <NA> <NA> s <NA> <NA>\n", "must be numbers"),
    ("SPEAKER a 1 -1 1.0 <NA> <NA> s <NA> <NA>\n", ">= 0"),
    ("SPKR-INFO a 1 <NA> <NA> <NA> unknown s <NA>\n", "no SPEAKER lines"),
])
def test_malformed_rttm_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "ref.rttm"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        read_rttm(path)
    assert str(path) in str(caught.value)


def test_rttm_of_a_missing_or_binary_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_rttm(tmp_path / "none.rttm")
    (tmp_path / "bin.rttm").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_rttm(tmp_path / "bin.rttm")


def test_der_comes_from_pyannote_with_the_nist_collar():
    from mvector.apps.diarization import score_diarization

    reference = {"a": [(0.0, 10.0, "x"), (10.0, 20.0, "y")]}
    durations = {"a": 20.0}
    perfect = score_diarization(reference, {"a": [(0.0, 10.0, "s1"), (10.0, 20.0, "s2")]}, durations)
    assert perfect["pooled"]["der"] == 0.0
    # One speaker for everything: half the speech is confused; the collar forgives 0.25 s each side of t=10.
    merged = score_diarization(reference, {"a": [(0.0, 20.0, "s1")]}, durations)["pooled"]
    assert merged["confusion"] == pytest.approx(9.75 / 19.5)
    nothing = score_diarization(reference, {"a": []}, durations)["pooled"]
    assert nothing["miss"] == pytest.approx(1.0) and nothing["der_no_overlap"] == pytest.approx(1.0)
    # Boundaries within the collar cost nothing.
    shifted = score_diarization(reference, {"a": [(0.2, 10.2, "s1"), (10.2, 20.0, "s2")]}, durations)["pooled"]
    assert shifted["der"] == pytest.approx(0.0, abs=1e-9)


def test_overlap_is_scored_or_skipped():
    from mvector.apps.diarization import score_diarization

    reference = {"a": [(0.0, 10.0, "x"), (5.0, 10.0, "y")]}
    figures = score_diarization(reference, {"a": [(0.0, 10.0, "s1")]}, {"a": 10.0})["pooled"]
    assert figures["miss"] > 0.3 and figures["der_no_overlap"] == pytest.approx(0.0, abs=1e-9)
