"""scripts/backbone_table.py on the smoke set: two small backbones for a few steps, then resume; and
scripts/device_table.sh, training there and scoring here."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from mvector.config import load_config
from mvector.errors import MVectorError
from mvector.model_dir import read_model_dir
from mvector.models import build_backbone

from training_helpers import smoke_rows

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


def load_script():
    spec = importlib.util.spec_from_file_location("backbone_table", REPO / "scripts" / "backbone_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_corpus(root: Path) -> Path:
    """A shared-layout corpus (train/list.tsv, dev/list.tsv) of smoke files: four training speakers,
    two others for the trials, as create_data.py finds ../shared/data."""
    rows = smoke_rows()
    speakers = sorted({speaker for _, speaker in rows})
    for folder, chosen in (("train", speakers[:4]), ("dev", speakers[4:])):
        (root / folder).mkdir(parents=True)
        (root / folder / "list.tsv").write_text("".join(f"{path}\t{speaker}\n" for path, speaker in rows
                                                        if speaker in chosen), encoding="utf-8")
    return root


# The shipped configs of the two backbones, made small: what the test trains.
SMALL_MODEL_ARGS = {"tdnn.yml": {"channels": 64},
                    "res2net.yml": {"m_channels": 8, "base_width": 8, "layers": [1, 1, 1, 1]}}


def write_small_configs(folder: Path) -> Path:
    folder.mkdir()
    (folder / "base.yml").write_bytes((REPO / "configs" / "base.yml").read_bytes())  # the recipe they name
    for name, model_args in SMALL_MODEL_ARGS.items():
        data = yaml.safe_load((REPO / "configs" / name).read_text(encoding="utf-8"))
        data["model_conf"]["model_args"].update(model_args)
        (folder / name).write_text(yaml.safe_dump(data), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    script = load_script()
    tmp = tmp_path_factory.mktemp("table")
    corpus = write_corpus(tmp / "corpus")
    configs = write_small_configs(tmp / "configs")
    lists = tmp / "lists"
    argv = ["--steps", str(STEPS), "--backbones", "TDNN", "Res2Net", "--out", str(tmp / "out"),
            "--configs_dir", str(configs),
            "--data_root", str(corpus), "--trials", str(lists / "trials.tsv"), "--rtf_repeats", "2",
            "--no_progress", f"--override=dataset_conf.train_list={lists / 'train_list.txt'}",
            f"--override=dataset_conf.aug_conf_path={REPO / 'configs' / 'recipes' / 'augmentation_cpu.yml'}",
            "--override=dataset_conf.batch_size=8", "--override=dataset_conf.num_workers=0",
            "--override=dataset_conf.min_duration=0.3", "--override=dataset_conf.max_duration=0.5",
            "--override=model_conf.model_args.embd_dim=32", "--override=preprocess_conf.method_args.num_mel_bins=40"]
    threads = torch.get_num_threads()
    assert script.main(argv) == 0
    assert torch.get_num_threads() == threads  # the RTF measurement gives its thread count back
    return script, argv, tmp / "out", lists, configs


@pytest.mark.slow
@pytest.mark.data
def test_each_backbone_gets_sane_figures(table_run):
    _, _, out, lists, configs = table_run
    num_trials = sum(1 for line in (lists / "trials.tsv").read_text().splitlines() if line)
    for name in ("TDNN", "Res2Net"):
        result = json.loads((out / f"{name}.json").read_text())
        assert result["backbone"] == name and result["steps"] == STEPS and result["batch_size"] == 8
        assert 0.0 <= result["eer"] <= 1.0 and math.isfinite(result["min_dcf"]) and result["min_dcf"] >= 0
        assert result["num_trials"] + result["skipped_trials"] == num_trials
        assert 0 < result["cpu_rtf"] < 10 and result["rtf_threads"] == 2
        config, _, state = read_model_dir(result["model_dir"])
        assert state["step"] == STEPS  # the budget, exactly
        expected = build_backbone(name, config["preprocess_conf"]["method_args"]["num_mel_bins"],
                                  **config["model_conf"]["model_args"])
        assert result["params"] == sum(p.numel() for p in expected.parameters())
        # The backbone's own config gives the model; the recipe and the overrides everything else.
        own = load_config(configs / f"{name.lower()}.yml")
        assert config["model_conf"]["model_args"] == dict(own["model_conf"]["model_args"], embd_dim=32)
        assert config["optimizer_conf"]["optimizer_args"]["lr"] == 0.002
        assert config["train_conf"]["max_steps"] == STEPS and config["dataset_conf"]["max_duration"] == 0.5
        # The schedules span the epochs the budget starts, counted as the trainer counted them.
        assert config["train_conf"]["max_epoch"] == math.ceil(STEPS / result["steps_per_epoch"])
    a, b = (json.loads((out / f"{n}.json").read_text())["recipe"] for n in ("TDNN", "Res2Net"))
    assert a == b


@pytest.mark.data
def test_table_lists_the_rows_in_order(table_run):
    _, _, out, _, _ = table_run
    lines = (out / "table.md").read_text().splitlines()
    assert lines[0].startswith("| backbone | params (M) | steps×batch | dev EER % | MinDCF 0.01 | CPU RTF |")
    rows = [line.split("|")[1:-1] for line in lines[2:4]]
    assert [r[0].strip() for r in rows] == ["Res2Net", "TDNN"]
    for name, row in zip(("Res2Net", "TDNN"), rows):
        result = json.loads((out / f"{name}.json").read_text())
        assert row[2].strip() == f"{STEPS}×8"
        assert float(row[3]) == pytest.approx(100 * result["eer"], abs=0.006)
        assert float(row[1]) == pytest.approx(result["params"] / 1e6, abs=0.006)


@pytest.mark.data
def test_a_second_run_skips_what_is_done(table_run, monkeypatch):
    script, argv, out, _, _ = table_run
    before = {n: (out / f"{n}.json").read_text() for n in ("TDNN", "Res2Net")}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished backbone was trained or scored again")

    monkeypatch.setattr(script, "train_backbone", no_training)
    monkeypatch.setattr(script, "measure", no_training)
    # More loader workers change the speed, not the result: still the same table.
    assert script.main(argv + ["--override=dataset_conf.num_workers=1"]) == 0
    assert {n: (out / f"{n}.json").read_text() for n in before} == before


@pytest.mark.data
def test_another_budget_in_the_same_folder_is_refused(table_run, capsys):
    script, argv, out, _, _ = table_run
    argv = list(argv)
    argv[argv.index("--steps") + 1] = str(STEPS + 1)
    assert script.main(argv) == 1
    error = capsys.readouterr().err
    assert "another recipe or budget" in error and "train_conf.max_steps" in error


@pytest.mark.data
def test_an_interrupted_training_continues_at_its_step(table_run, monkeypatch):
    """A last_model without a result JSON is resumed, not restarted: only the missing steps run."""
    script, argv, out, _, _ = table_run
    import mvector.training.trainer as trainer_module

    seen = {}

    real_train = trainer_module.MVectorTrainer.train

    def spy(self, resume=False, **kwargs):
        seen["resume"] = resume
        return real_train(self, resume=resume, **kwargs)

    monkeypatch.setattr(trainer_module.MVectorTrainer, "train", spy)
    (out / "TDNN.json").unlink()
    (out / "TDNN.train.json").unlink()
    assert script.main(argv) == 0
    result = json.loads((out / "TDNN.json").read_text())
    assert seen["resume"] is True and result["resumed_from_step"] == STEPS and result["seconds_per_step"] is None


@pytest.mark.data
def test_a_missing_trial_list_is_an_error(tmp_path, capsys):
    script = load_script()
    corpus = write_corpus(tmp_path / "corpus")
    code = script.main(["--steps", "1", "--backbones", "TDNN", "--out", str(tmp_path / "out"),
                        "--data_root", str(corpus), "--trials", str(tmp_path / "none.tsv"),
                        f"--override=dataset_conf.train_list={tmp_path / 'lists' / 'train_list.txt'}"])
    assert code == 1 and "trial list not found" in capsys.readouterr().err


def test_a_recipe_setting_the_model_is_refused(tmp_path):
    script = load_script()
    recipe = tmp_path / "recipe.yml"
    recipe.write_text("model_conf:\n  model: TDNN\n", encoding="utf-8")
    with pytest.raises(MVectorError, match="must not set model_conf"):
        script.backbone_config("Res2Net", REPO / "configs", recipe, [])


@pytest.mark.parametrize("row, loss", [("LSTM_GE2E", "GE2ELoss"), ("Transformer_Triplet", "TripletLoss"),
                                       ("ResCNN_Triplet", "TripletLoss")])
def test_a_reference_system_keeps_its_loss_and_batches_under_the_recipe(row, loss):
    """The recipe sets crops, augmentation, optimiser and schedule for every row; a reference system
    keeps its own loss and P x K batches, and only those keys may differ from the AAM rows."""
    script = load_script()
    recipe = REPO / "configs" / "recipes" / "backbone_table.yml"
    system = script.backbone_config(row, REPO / "configs", recipe, [])
    aam = script.backbone_config("TDNN", REPO / "configs", recipe, [])
    assert system["loss_conf"]["loss"] == loss and aam["loss_conf"]["loss"] == "AAMLoss"
    assert (system["dataset_conf"]["speakers_per_batch"], system["dataset_conf"]["utterances_per_speaker"]) == (16, 4)
    assert system["optimizer_conf"] == aam["optimizer_conf"]
    assert system["dataset_conf"]["max_duration"] == aam["dataset_conf"]["max_duration"] == 2.0
    trials = REPO / "configs"
    assert script.recipe_differences(script.recipe_of(aam, trials), script.recipe_of(system, trials))
    assert not script.recipe_differences(script.recipe_of(aam, trials), script.recipe_of(system, trials),
                                         script.own_keys("TDNN", row))


@pytest.mark.slow
@pytest.mark.data
def test_trained_on_a_device_and_scored_here(table_run, tmp_path, monkeypatch):
    """device_table.sh trains (on the CPU here) and returns one tar per backbone; unpacked into an
    empty folder, the scoring run trains nothing and gives the row."""
    script, argv, _, lists, _ = table_run
    data, out, table = tmp_path / "data", tmp_path / "out", tmp_path / "table"
    data.mkdir()
    out.mkdir()
    (data / "train").symlink_to(Path(argv[argv.index("--data_root") + 1]) / "train")
    common = [a for a in argv[argv.index("--configs_dir"):] if not a.startswith("--override=dataset_conf.train_list")]
    env = {**os.environ, "OUT": str(out), "DATA": str(data), "LISTS": str(tmp_path / "lists"), "GPU_FLAG": "",
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "device_table.sh"), str(STEPS), "TDNN", "--", *common],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["TDNN.tar", "table.log"]
    assert "score them with the same command without --train_only" in (out / "table.log").read_text()
    with tarfile.open(out / "TDNN.tar") as tar:
        names = tar.getnames()
        assert "TDNN.train.json" in names and "TDNN/final/model.pth" in names
        assert not any("last_model" in name for name in names)  # no optimizer state: it would not fit
        tar.extractall(table)

    def no_training(*args, **kwargs):
        raise AssertionError("a backbone trained on the device was trained again")

    monkeypatch.setattr(script, "train_backbone", no_training)
    scoring = ["--steps", str(STEPS), "--backbones", "TDNN", "--out", str(table),
               f"--override=dataset_conf.train_list={tmp_path / 'lists' / 'train_list.txt'}", *common]
    assert script.main(scoring) == 0
    result = json.loads((table / "TDNN.json").read_text())
    assert result["model_dir"] == str(table / "TDNN" / "final") and 0.0 <= result["eer"] <= 1.0
    _, weights, state = read_model_dir(table / "TDNN" / "final")
    assert state["step"] == STEPS and all(k.startswith("backbone.") for k in weights)
    stored = torch.load(table / "TDNN" / "final" / "model.pth")
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
