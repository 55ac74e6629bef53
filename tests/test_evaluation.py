import importlib.util
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mvector.config import load_config
from mvector.embedder import build_embedder
from mvector.errors import MVectorError
from mvector.evaluation import evaluate_cross, evaluate_trials, extract_embeddings
from mvector.lists import read_labelled_list, read_trials
from mvector.metrics import as_norm, cosine_score_matrix, pair_scores, verification_metrics
from mvector.model_dir import save_model_dir
from predict_helpers import fit_batchnorm_to_noise

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"
FINAL_LINE = re.compile(r"^EER: [0-9.]+ MinDCF: [0-9.]+ MinDCF@0\.05: [0-9.]+ threshold: (?P<threshold>-?[0-9.]+)$")
# A small TDNN keeps each forward pass cheap; it is the real front-end and backbone all the same.
TINY = ["model_conf.model_args.channels=16", "model_conf.model_args.embd_dim=32"]


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "configs" / "tdnn.yml", TINY)


@pytest.fixture(scope="module")
def embedder(config):
    """Random weights with fitted BatchNorm statistics: with untouched ones the order of scores, and
    so an EER, would turn on rounding."""
    torch.manual_seed(0)
    return fit_batchnorm_to_noise(build_embedder(config))


def write_voice(path, seconds, pitch, seed, sample_rate=16000):
    """A harmonic tone with noise: "speakers" differ in pitch, utterances in noise and length."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wav = sum(np.sin(2 * np.pi * pitch * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    wav = 0.3 * wav / np.abs(wav).max() + 0.02 * rng.standard_normal(len(t))
    sf.write(path, wav.astype(np.float32), sample_rate)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four speakers x three utterances of 0.6-2.6 s, one corrupt file and one too short for TDNN."""
    folder = tmp_path_factory.mktemp("corpus")
    files = {}
    for s, pitch in enumerate((110, 160, 220, 300)):
        for u in range(3):
            files[(s, u)] = write_voice(folder / f"spk{s}_{u}.wav", 0.6 + 0.35 * (s + 3 * u) / 2, pitch, 10 * s + u)
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(200)))
    short = write_voice(folder / "short.wav", 0.05, 200, 99)
    return folder, files, str(corrupt), short


def test_batched_embeddings_equal_one_by_one(embedder, corpus):
    _, files, _, _ = corpus
    paths = list(files.values())
    batched = extract_embeddings(embedder, paths, batch_size=5, num_workers=2, progress=False)
    single = extract_embeddings(embedder, paths, batch_size=1, num_workers=0, progress=False)
    assert set(batched) == set(single) == set(paths)
    for path in paths:
        assert batched[path].dtype == np.float32
        assert np.linalg.norm(batched[path]) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(batched[path], single[path], atol=2e-5)


def test_backbones_that_ask_for_it_get_smaller_passes_on_the_cpu(embedder, corpus, monkeypatch):
    # The 2-D ResNets (cpu_batch_frames) run batches of long recordings at gigabytes of feature maps
    # on the CPU: extraction splits them as the predictor does, and the embeddings stay the same.
    _, files, _, _ = corpus
    paths = list(files.values())
    whole = extract_embeddings(embedder, paths, batch_size=8, num_workers=0, progress=False)
    passes = []
    hook = embedder.backbone.register_forward_pre_hook(lambda module, args: passes.append(len(args[0])))
    monkeypatch.setattr(embedder.backbone, "cpu_batch_frames", 120, raising=False)
    try:
        split = extract_embeddings(embedder, paths, batch_size=8, num_workers=0, progress=False)
    finally:
        hook.remove()
    frames = embedder.featurizer.num_frames(int(16000 * 0.6))  # the shortest utterance
    assert max(passes) <= max(1, 120 // frames) < 8
    for path in paths:
        np.testing.assert_allclose(split[path], whole[path], atol=2e-5)


def test_unusable_files_are_skipped_and_reported(embedder, corpus, caplog):
    folder, files, corrupt, short = corpus
    missing = str(folder / "missing.wav")
    good = [files[(0, 0)], files[(1, 2)]]
    with caplog.at_level(logging.WARNING, logger="mvector.evaluation"):
        result = extract_embeddings(embedder, good + [corrupt, missing, short], batch_size=8, num_workers=0,
                                    progress=False)
    assert set(result) == set(good)
    report = caplog.text
    assert "skipped 3 of 5" in report
    for name in ("corrupt.wav", "missing.wav", "short.wav"):
        assert name in report
    # The short file failed on its own; its batch-mates still match their single-file embeddings.
    alone = extract_embeddings(embedder, good, batch_size=1, num_workers=0, progress=False)
    for path in good:
        np.testing.assert_allclose(result[path], alone[path], atol=2e-5)


def test_long_files_are_cropped_to_max_duration(embedder, tmp_path):
    # One voice for the first second, another after it: the crop must hear only the first.
    first = sf.read(write_voice(tmp_path / "first.wav", 1.0, 150, 1), dtype="float32")[0]
    rest = sf.read(write_voice(tmp_path / "rest.wav", 2.0, 300, 2), dtype="float32")[0]
    long, head = str(tmp_path / "long.wav"), tmp_path / "head.wav"
    sf.write(long, np.concatenate([first, rest]), 16000)
    sf.write(head, first, 16000)
    cropped = extract_embeddings(embedder, [long], max_duration=1.0, num_workers=0, progress=False)[long]
    whole = extract_embeddings(embedder, [long], max_duration=20.0, num_workers=0, progress=False)[long]
    reference = extract_embeddings(embedder, [str(head)], num_workers=0, progress=False)[str(head)]
    np.testing.assert_allclose(cropped, reference, atol=1e-5)
    assert not np.allclose(cropped, whole, atol=1e-3)


def test_embedder_mode_is_restored(config, corpus):
    _, files, _, _ = corpus
    model = build_embedder(config).train()
    extract_embeddings(model, [files[(0, 0)]], num_workers=0, progress=False)
    assert model.training


def write_trials(path, rows):
    path.write_text("".join(f"{a}\t{b}\t{label}\n" for a, b, label in rows), encoding="utf-8")
    return path


def test_evaluate_trials_scores_pairs_and_drops_unusable_ones(embedder, config, corpus, tmp_path):
    folder, files, corrupt, _ = corpus
    rows = [(files[(s, 0)], files[(s, u)], 1) for s in range(4) for u in (1, 2)]
    rows += [(files[(s, 1)], files[((s + d) % 4, 2)], 0) for s in range(4) for d in (1, 2)]
    rows.append((files[(0, 0)], corrupt, 0))
    # Relative paths resolve against the trial list's folder.
    rows.append((Path(files[(3, 2)]).name, Path(files[(3, 1)]).name, 1))
    trials = write_trials(folder / "trials.tsv", rows)
    plot = tmp_path / "det" / "curve.png"
    result = evaluate_trials(embedder, trials, config, num_workers=0, progress=False, det_plot_path=plot)

    # The trial files extracted and scored as evaluate_trials does: this tiny random TDNN gives every
    # pair a cosine within 1e-5 of 1, so other batches (other padding) or another float32 dot product
    # would reorder the scores by rounding alone.
    paths1, paths2, _ = read_trials(trials)
    data = config["dataset_conf"]
    embeddings = extract_embeddings(embedder, paths1 + paths2, batch_size=data["eval_batch_size"],
                                    max_duration=data["eval_max_duration"], num_workers=0, progress=False,
                                    normalize_db=data["target_db"] if data["use_db_normalization"] else None)
    usable = rows[:16] + [(files[(3, 2)], files[(3, 1)], 1)]
    scores = pair_scores(np.stack([embeddings[str(a)] for a, _, _ in usable]),
                         np.stack([embeddings[str(b)] for _, b, _ in usable]))
    expected = verification_metrics(scores, np.array([label for _, _, label in usable]))
    for key in ("eer", "min_dcf", "min_dcf_05", "threshold"):
        assert result[key] == pytest.approx(expected[key], abs=1e-5)
    assert result["num_trials"] == 17 and result["skipped_trials"] == 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # AS-Norm: against a cohort, each trial normalised as the direct formula says.
    cohort = np.random.default_rng(0).standard_normal((12, 32)).astype(np.float32)
    normed = evaluate_trials(embedder, trials, config, num_workers=0, progress=False, cohort=cohort, top_k=5)
    first = np.stack([embeddings[a] for a, _, _ in usable])
    second = np.stack([embeddings[b] for _, b, _ in usable])
    direct = as_norm(scores, cosine_score_matrix(first, cohort), cosine_score_matrix(second, cohort), top_k=5)
    expected = verification_metrics(direct, np.array([label for _, _, label in usable]))
    assert normed["eer"] == pytest.approx(expected["eer"], abs=1e-5)
    assert normed["threshold"] == pytest.approx(expected["threshold"], abs=1e-4)


def test_evaluate_cross_scores_speaker_models_against_every_test_file(embedder, config, corpus):
    folder, files, corrupt, _ = corpus
    enroll = folder / "enroll.txt"
    enroll.write_text("".join(f"{files[(s, u)]}\tspk{s}\n" for s in range(4) for u in (0, 1)), encoding="utf-8")
    tests = folder / "tests.txt"
    tests.write_text("".join(f"{files[(s, 2)]}\tspk{s}\t1.5\n" for s in range(4)) + f"{corrupt}\tspk0\t1.0\n",
                     encoding="utf-8")
    result = evaluate_cross(embedder, enroll, tests, config, num_workers=0, progress=False)

    embeddings = extract_embeddings(embedder, list(files.values()), num_workers=0, progress=False)
    models = [np.mean([embeddings[files[(s, u)]] for u in (0, 1)], axis=0) for s in range(4)]
    scores = np.array([[m @ embeddings[files[(t, 2)]] / np.linalg.norm(m) for t in range(4)] for m in models])
    expected = verification_metrics(scores, np.eye(4, dtype=bool))
    for key in ("eer", "min_dcf", "min_dcf_05", "threshold"):
        assert result[key] == pytest.approx(expected[key], abs=1e-5)
    assert result["num_trials"] == 16 and result["skipped_trials"] == 4


@pytest.mark.parametrize("text,match", [
    ("a.wav\tb.wav\n", r"trials.tsv:1: expected path1<TAB>path2<TAB>1\|0"),
    ("a.wav\tb.wav\t1\nc.wav\td.wav\tyes\n", r"trials.tsv:2: trial label must be 1"),
    ("\n", "is empty"),
])
def test_malformed_trial_lists_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "trials.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MVectorError, match=match):
        read_trials(path)


def test_missing_lists_and_bad_durations_raise(tmp_path):
    with pytest.raises(MVectorError, match="trials file not found"):
        read_trials(tmp_path / "nope.tsv")
    bad = tmp_path / "list.txt"
    bad.write_text("a.wav\tspk\tlong\n", encoding="utf-8")
    with pytest.raises(MVectorError, match="list.txt:1: duration must be a number"):
        read_labelled_list(bad)


@pytest.fixture(scope="module")
def model_dir(config, tmp_path_factory):
    torch.manual_seed(1)
    model = build_embedder(config)
    weights = {"backbone." + k: v for k, v in model.backbone.state_dict().items()}
    return save_model_dir(tmp_path_factory.mktemp("models") / "tiny", weights, config, {"epoch": 0})


def load_eval_script():
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.data
def test_eval_script_end_to_end_on_dev_trials(model_dir, tmp_path):
    rows = [line.split("\t") for line in (DEV / "trials.tsv").read_text(encoding="utf-8").splitlines()]
    picked = [r for r in rows if r[2] == "1"][:3] + [r for r in rows if r[2] == "0"][:6]
    trials = write_trials(tmp_path / "trials.tsv", [(DEV / a, DEV / b, label) for a, b, label in picked])
    done = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model_dir", str(model_dir),
                           "--trials", str(trials), "--backend", "batched", "--num_workers", "0", "--no_progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.strip().splitlines()
    assert FINAL_LINE.match(lines[-1]), lines[-1]


@pytest.mark.data
def test_eval_script_windows_embed_alike_on_both_paths(tmp_path, capsys):
    from predict_helpers import make_model_dir

    model_dir = make_model_dir(tmp_path / "model")  # BatchNorm fitted to noise: embeddings that differ
    rows = [line.split("\t") for line in (DEV / "trials.tsv").read_text(encoding="utf-8").splitlines()]
    picked = [r for r in rows if r[2] == "1"][:4] + [r for r in rows if r[2] == "0"][:8]
    trials = write_trials(tmp_path / "trials.tsv", [(DEV / a, DEV / b, label) for a, b, label in picked])
    script = load_eval_script()

    def threshold(*options):
        assert script.main(["--model_dir", str(model_dir), "--trials", str(trials), "--no_progress", *options]) == 0
        return float(FINAL_LINE.match(capsys.readouterr().out.strip().splitlines()[-1])["threshold"])

    batched = threshold("--window_seconds", "1.0", "--backend", "batched", "--num_workers", "0")
    assert threshold("--window_seconds", "1.0", "--backend", "torch") == pytest.approx(batched, abs=1e-4)
    assert threshold("--window_seconds", "1.0") == pytest.approx(batched, abs=1e-4)  # the default: auto
    assert threshold() != pytest.approx(batched, abs=1e-3)  # the model's own 10 s windows: whole files here


@pytest.mark.parametrize("problem", ["missing model dir", "missing trials", "malformed trials", "half a pair",
                                     "hop over window", "threshold with other windows", "loader options",
                                     "predictor with as-norm"])
def test_eval_script_reports_bad_input_in_one_line(model_dir, tmp_path, capsys, problem):
    malformed = tmp_path / "bad.tsv"
    malformed.write_text("only-one-column\n", encoding="utf-8")
    argv = {
        "missing model dir": ["--model_dir", str(tmp_path / "no_such_model"), "--trials", str(malformed)],
        "missing trials": ["--model_dir", str(model_dir), "--trials", str(tmp_path / "none.tsv")],
        "malformed trials": ["--model_dir", str(model_dir), "--trials", str(malformed)],
        "half a pair": ["--model_dir", str(model_dir), "--enroll_list", str(malformed)],
        "hop over window": ["--model_dir", str(model_dir), "--window_seconds", "2", "--hop_seconds", "3"],
        "threshold with other windows": ["--model_dir", str(model_dir), "--trials", str(malformed),
                                         "--save_threshold", "--window_seconds", "2"],
        "loader options": ["--model_dir", str(model_dir), "--trials", str(malformed), "--num_workers", "2"],
        "predictor with as-norm": ["--model_dir", str(model_dir), "--trials", str(malformed), "--backend", "torch",
                                   "--as_norm_cohort", str(malformed)],
    }[problem]
    assert load_eval_script().main(argv + ["--no_progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert {"missing model dir": "model directory not found", "missing trials": "trials file not found",
            "malformed trials": "bad.tsv:1", "half a pair": "go together", "hop over window": "--hop_seconds must be",
            "threshold with other windows": "drop --window_seconds", "loader options": "add --backend batched",
            "predictor with as-norm": "drop --as_norm_cohort"}[problem] in err[0]


def test_eval_script_without_model_dir_needs_a_shipped_model(tmp_path, capsys, monkeypatch):
    import mvector.pretrained

    monkeypatch.setattr(mvector.pretrained, "DEFAULT_MODEL_NAME", "NoSuchModel")  # as before one ships
    script = load_eval_script()
    assert script.main(["--trials", str(tmp_path / "t.tsv"), "--no_progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no --model_dir given and no pretrained default model is shipped"), err


@pytest.mark.data
def test_save_threshold_stores_what_the_predictor_path_measures(model_dir, tmp_path, capsys):
    import json
    import shutil

    from mvector.inference.predictor import MVectorPredictor

    rows = [line.split("\t") for line in (DEV / "trials.tsv").read_text(encoding="utf-8").splitlines()]
    picked = [r for r in rows if r[2] == "1"][:3] + [r for r in rows if r[2] == "0"][:6]
    trials = write_trials(tmp_path / "trials.tsv", [(DEV / a, DEV / b, label) for a, b, label in picked])
    copy = shutil.copytree(model_dir, tmp_path / "model")
    assert load_eval_script().main(["--model_dir", str(copy), "--trials", str(trials), "--no_progress",
                                    "--save_threshold"]) == 0
    printed = float(FINAL_LINE.match(capsys.readouterr().out.strip().splitlines()[-1]).group("threshold"))
    state = json.loads((copy / "model.state").read_text(encoding="utf-8"))
    assert state["threshold"] == pytest.approx(printed, abs=1e-6) and state["epoch"] == 0
    with MVectorPredictor(model_dir=copy) as predictor:
        assert predictor.threshold == pytest.approx(state["threshold"])
