"""The command-line scripts as users run them: infer_contrast.py, extract_embeddings.py, python -m mvector.

Every run is a real subprocess; they are started together (a few at a time) once per module, and
each test checks one result. A failure must be one line on stderr naming the file, never a traceback.
"""
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mvector.inference.predictor import MVectorPredictor
from predict_helpers import ROOT, bad_audio_files, dev_files, make_model_dir, write_wav

pytestmark = pytest.mark.integration

# One torch thread per process: several run at once, and oversubscribed threads crawl.
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
SIMILARITY_LINE = re.compile(r"^similarity: (-?\d\.\d{4})  threshold: (-?\d\.\d{4})  same speaker: (yes|no)$")


def _run(command):
    done = subprocess.run([sys.executable, *command], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    model = make_model_dir(folder / "model", state={"threshold": 0.37, "operating_points": {
        "eer": {"threshold": 0.37, "far": 0.05, "frr": 0.05}, "far=0.001": {"threshold": 0.9, "far": 0.001, "frr": 0.5}}})
    a, b, c = dev_files(3)
    bad = bad_audio_files(folder / "bad")
    listing = folder / "lists" / "list.txt"
    listing.parent.mkdir()
    silent = write_wav(folder / "lists" / "silent.wav", np.zeros(16000, dtype=np.float32))
    # Relative paths are relative to the list; a label column is allowed and ignored.
    listing.write_text(f"{a}\tspk1\n{os.path.relpath(b, listing.parent)}\n\n{folder / 'gone.wav'}\tspk9\n"
                       f"silent.wav\tspk2\n{c}\tspk3\textra\n", encoding="utf-8")
    all_bad = folder / "lists" / "all_bad.txt"
    all_bad.write_text(f"{folder / 'gone.wav'}\n{silent}\n", encoding="utf-8")
    contrast = ["infer_contrast.py", "--model_dir", str(model)]
    commands = {
        "ok": contrast + ["--audio_path1", a, "--audio_path2", b],
        "same_file": contrast + ["--audio_path1", a, "--audio_path2", a, "--threshold", "0.999"],
        "strict": contrast + ["--audio_path1", a, "--audio_path2", b, "--threshold", "1.0"],
        "bad_threshold": contrast + ["--audio_path1", a, "--audio_path2", b, "--threshold", "2"],
        "named_threshold": contrast + ["--audio_path1", a, "--audio_path2", b, "--threshold", "far=0.001"],
        "unknown_point": contrast + ["--audio_path1", a, "--audio_path2", b, "--threshold", "far=0.3"],
        "unknown_model": ["infer_contrast.py", "--model", "huge", "--audio_path1", a, "--audio_path2", b],
        "extract": ["extract_embeddings.py", "--list", str(listing), "--out", str(folder / "out" / "emb.npz"),
                    "--model_dir", str(model), "--batch_size", "2"],
        "extract_all_bad": ["extract_embeddings.py", "--list", str(all_bad), "--out", str(folder / "none.npz"),
                            "--model_dir", str(model)],
        "unknown_backend": contrast + ["--audio_path1", a, "--audio_path2", b, "--backend", "tensorrt"],
        "not_exported": contrast + ["--audio_path1", a, "--audio_path2", b, "--backend", "openvino"],
        "quick_check": ["-m", "mvector"],
        "quick_compare": ["-m", "mvector", "--model_dir", str(model), "--audio_path1", a, "--audio_path2", b],
    }
    for kind, (path, _) in bad.items():
        commands[kind] = contrast + ["--audio_path1", a, "--audio_path2", path]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(commands, pool.map(_run, commands.values())))
    return dict(results=results, model=model, files=(a, b, c), bad=bad, folder=folder)


def _one_error_line(stderr):
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.slow
@pytest.mark.data
def test_contrast_prints_similarity_threshold_and_decision(setup):
    code, out, err = setup["results"]["ok"]
    assert code == 0, err
    match = SIMILARITY_LINE.match(out.strip())
    assert match, out
    a, b, _ = setup["files"]
    expected = MVectorPredictor(setup["model"]).contrast(a, b)
    assert float(match[1]) == pytest.approx(expected, abs=1e-4)
    assert float(match[2]) == 0.37  # the model's threshold from model.state
    assert match[3] == ("yes" if expected >= 0.37 else "no")


@pytest.mark.data
def test_threshold_option_decides(setup):
    code, out, _ = setup["results"]["same_file"]
    assert code == 0 and SIMILARITY_LINE.match(out.strip())[3] == "yes"
    code, out, _ = setup["results"]["strict"]
    match = SIMILARITY_LINE.match(out.strip())
    assert code == 0 and match[2] == "1.0000" and match[3] == "no"
    code, _, err = setup["results"]["bad_threshold"]
    assert code == 2 and "threshold" in _one_error_line(err)
    code, out, err = setup["results"]["named_threshold"]
    assert code == 0 and SIMILARITY_LINE.match(out.strip())[2] == "0.9000", err
    code, _, err = setup["results"]["unknown_point"]
    assert code == 2 and "its operating points: eer, far=0.001" in _one_error_line(err)
    code, _, err = setup["results"]["unknown_model"]
    assert code == 2 and "no packaged model named 'huge'; packaged: default" in _one_error_line(err)


@pytest.mark.data
@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "silent", "too_short", "nan"])
def test_bad_file_is_one_line_naming_the_file_and_the_problem(setup, kind):
    code, out, err = setup["results"][kind]
    path, problem = setup["bad"][kind]
    assert code == 2 and out == ""
    line = _one_error_line(err)
    assert path in line and problem in line


@pytest.mark.data
def test_backend_errors_are_one_line_naming_the_choices_or_the_missing_file(setup):
    code, _, err = setup["results"]["unknown_backend"]
    line = _one_error_line(err)
    assert code == 2 and "unknown inference backend 'tensorrt'" in line and "openvino" in line
    code, _, err = setup["results"]["not_exported"]
    line = _one_error_line(err)
    assert code == 2 and str(setup["model"] / "model.onnx") in line and "export_model.py" in line


@pytest.mark.slow
@pytest.mark.data
def test_contrast_through_an_exported_graph_gives_the_torch_score(setup, tmp_path, capsys):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    from mvector.apps.cli import contrast, run_cli
    from mvector.inference.export import export_model

    exported = tmp_path / "exported"
    export_model(setup["model"], exported, "onnx")
    a, b, _ = setup["files"]
    assert run_cli(contrast, a, b, model_dir=exported, backend="openvino") == 0
    match = SIMILARITY_LINE.match(capsys.readouterr().out.strip())
    assert float(match[1]) == pytest.approx(MVectorPredictor(setup["model"]).contrast(a, b), abs=1e-4)


def test_no_model_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import mvector.pretrained
    from mvector.apps.cli import contrast, run_cli

    monkeypatch.setattr(mvector.pretrained, "DEFAULT_MODEL_NAME", "NoSuchModel")  # as before one ships
    assert run_cli(contrast, str(tmp_path / "a.wav"), str(tmp_path / "b.wav")) == 2
    assert "no pretrained default model is shipped (NoSuchModel is missing" in _one_error_line(capsys.readouterr().err)


@pytest.mark.data
def test_extract_embeddings_skips_and_reports_bad_files(setup):
    code, out, err = setup["results"]["extract"]
    assert code == 0, err
    assert "Traceback" not in err
    a, b, c = setup["files"]
    folder = setup["folder"]
    report = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(report) == 1 and report[0].startswith("skipped 2 of 5 file(s)")
    assert str(folder / "gone.wav") in report[0] and "silent.wav" in report[0]
    assert "wrote 3 embedding(s) of size 32" in out
    saved = np.load(folder / "out" / "emb.npz")
    assert [os.path.realpath(p) for p in saved["paths"]] == [os.path.realpath(p) for p in (a, b, c)]
    expected = MVectorPredictor(setup["model"]).predict_batch([a, b, c])
    assert saved["embeddings"].dtype == np.float32
    assert np.sum(saved["embeddings"] * expected, axis=1).min() > 0.9999


@pytest.mark.data
def test_extract_with_no_usable_file_fails_with_one_line(setup):
    code, _, err = setup["results"]["extract_all_bad"]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # after the progress bar
    assert len(errors) == 1
    line = errors[0]
    assert code == 2 and "none of its 2 file(s) could be used" in line and "gone.wav" in line
    assert not (setup["folder"] / "none.npz").exists()


@pytest.mark.data
def test_python_m_mvector_quick_check(setup):
    code, out, err = setup["results"]["quick_check"]
    assert code == 0, err
    assert re.search(r"embedding size \d+; 2\.0 s of audio embedded in [\d.]+ ms", out), out
    code, out, err = setup["results"]["quick_compare"]
    assert code == 0 and SIMILARITY_LINE.match(out.strip()), err
