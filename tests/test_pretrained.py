"""The model shipped inside the package: present, small, calibrated, and it tells voices apart."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvector.model_dir import MODEL_FILE, STATE_FILE
from mvector.pretrained import DEFAULT_MODEL_NAME, default_model_dir, pretrained_models

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "dev"
MAX_WEIGHTS_BYTES = 15_000_000


@pytest.fixture(scope="module")
def model_dir():
    return default_model_dir()


@pytest.mark.parametrize("name", sorted(set(pretrained_models()) - {"default"}))
def test_every_packaged_model_is_small_calibrated_and_documented(name):
    folder = pretrained_models()[name]
    assert (folder / MODEL_FILE).stat().st_size <= MAX_WEIGHTS_BYTES
    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    assert 0.0 < state["threshold"] < 1.0 and 0.0 <= state["eer"] < 0.5
    points = state["operating_points"]
    assert set(points) == {"eer", "far=0.01", "far=0.001"} and points["eer"]["threshold"] == state["threshold"]
    assert points["far=0.001"]["far"] <= 0.001 and points["far=0.01"]["far"] <= 0.01
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    for must in ("Common Voice", "speechocean762", "EER", "MinDCF", "Limits"):
        assert must in card, must
    if "imported_from" in state:  # weights of others: their licence, notice and our changes come along
        notice = (folder / "NOTICE").read_text(encoding="utf-8")
        assert state["imported_from"]["sha256"] in notice and "Changes made by mvector" in notice
        assert "Apache License" in (folder / "LICENSE").read_text(encoding="utf-8")
        assert "What we changed" in card


def test_small_names_the_distilled_ecapa_beside_the_default():
    from mvector.inference.predictor import MVectorPredictor
    from mvector.models import build_backbone
    from mvector.model_dir import read_model_dir

    folder = pretrained_models()["small"]
    config, _, _ = read_model_dir(folder)
    assert folder.name == "EcapaTdnn_Small" and folder != default_model_dir()
    backbone = build_backbone(config["model_conf"]["model"], 80, **config["model_conf"]["model_args"])
    assert sum(p.numel() for p in backbone.parameters()) <= 2_500_000  # the bound
    with MVectorPredictor(model="small", backend="torch") as predictor:
        assert predictor.model_dir == folder
        wave = (np.sin(np.arange(32000) / 7.0) * 0.3).astype(np.float32)
        assert predictor.predict(wave, sample_rate=16000).shape == (192,)


def test_the_default_is_the_imported_3dspeaker_model(model_dir):
    state = json.loads((model_dir / STATE_FILE).read_text(encoding="utf-8"))
    assert model_dir.name == DEFAULT_MODEL_NAME == "CAMPPlus_3DSpeaker"
    assert state["imported_from"]["toolkit"] == "3D-Speaker"


def dev_pairs(label, count):
    rows = [line.split("\t") for line in (DEV / "trials.tsv").read_text(encoding="utf-8").splitlines()]
    return [(DEV / a, DEV / b) for a, b, lab in rows if lab.strip() == label][:count]


@pytest.mark.slow
@pytest.mark.data
def test_the_default_model_separates_dev_speakers(model_dir):
    from mvector.inference.predictor import MVectorPredictor

    pairs = {"1": dev_pairs("1", 20), "0": dev_pairs("0", 20)}
    files = sorted({path for both in pairs.values() for pair in both for path in pair})
    with MVectorPredictor() as predictor:
        assert predictor.model_dir == model_dir
        vectors = dict(zip(files, predictor.predict_batch(files)))
    same, different = ([float(vectors[a] @ vectors[b]) for a, b in pairs[label]] for label in ("1", "0"))
    # An EER well under 10 % puts most of 20 pairs on the right side of the stored threshold.
    assert np.mean(same) > np.mean(different) + 0.2
    correct = sum(s >= predictor.threshold for s in same) + sum(d < predictor.threshold for d in different)
    assert correct >= 32, (same, different)


@pytest.mark.slow
@pytest.mark.data
def test_infer_contrast_works_with_no_model_argument(model_dir):
    (a, b), = dev_pairs("1", 1)
    done = subprocess.run([sys.executable, str(ROOT / "infer_contrast.py"), "--audio_path1", str(a),
                           "--audio_path2", str(b)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "similarity:" in done.stdout and "threshold:" in done.stdout


def test_the_packaged_models_keep_the_wheel_under_25_mb():
    """Everything under mvector/pretrained goes into the wheel (17 MB with the two models of this release;
    fp16 weights barely compress), so their total bounds its size."""
    folder = Path(default_model_dir()).parent
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 23_000_000
