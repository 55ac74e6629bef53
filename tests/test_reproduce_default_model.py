"""scripts/reproduce_default_model.sh, the one command behind the shipped model, end to end on a tiny
budget: the three stages of a tiny ECAPA-TDNN on the smoke set, the two weight averages, and the
packaged model with its measured threshold."""
import json
import os
import subprocess
import sys

import pytest
import torch

from mvector.model_dir import read_model_dir
from mvector.inference.predictor import MVectorPredictor
from training_helpers import REPO, smoke_rows, tiny_overrides, write_augmentation, write_lists

pytestmark = pytest.mark.integration


@pytest.mark.slow
@pytest.mark.data
def test_three_stages_two_averages_and_a_packaged_model_with_its_threshold(tmp_path):
    smoke_rows()  # skips where ../shared/data is absent
    train, trials = write_lists(tmp_path / "lists", per_speaker=10)
    overrides = tiny_overrides(train, trials, write_augmentation(tmp_path), max_epoch=2)
    models, package = tmp_path / "models", tmp_path / "package"
    env = {**os.environ, "PYTHON": sys.executable, "MODELS": str(models), "PACKAGE_DIR": str(package),
           "TRIALS": str(trials), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_default_model.sh"), "--use_gpu", "false",
                           *[arg for text in overrides for arg in ("--override", text)]],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stage2_best = models / "stage2" / "EcapaTdnn_Fbank" / "best_model"
    stage3_epochs = [models / "stage3" / "EcapaTdnn_Fbank" / f"epoch_{n}" for n in (1, 2)]
    _, _, averaged = read_model_dir(models / "stage3" / "avg_last")
    assert averaged["averaged_from"] == [str(p) for p in stage3_epochs]
    _, _, soup = read_model_dir(models / "soup")
    assert soup["averaged_from"] == [str(stage2_best), str(models / "stage3" / "avg_last")]

    config, weights, state = read_model_dir(package)
    assert all(k.startswith("backbone.") for k in weights)
    assert {v.dtype for v in torch.load(package / "model.pth").values() if v.is_floating_point()} == {torch.float16}
    # Stage 3's config travels with the model: its speed-perturbed classes and its 3 s windows.
    assert config["dataset_conf"]["speed_perturb_as_classes"] and config["dataset_conf"]["embed_window"] == 3.0
    # Measured on the given trials (a smoke digit under the predictor's 0.3 s minimum drops a trial).
    assert state["calibration_trials"] == "trials.tsv" and 30 <= state["calibration_num_trials"] <= 40
    assert -1 <= state["threshold"] <= 1
    assert MVectorPredictor(package).threshold == state["threshold"]
    assert json.loads(done.stdout[done.stdout.index("{"):])["model_dir"] == str(package)
