"""MVectorTrainer end to end on CPU: a tiny TDNN on the smoke set (6 speakers, ~0.5 s digits)."""
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from visualdl import LogReader

from mvector.config import load_config
from mvector.lists import read_loss_file
from mvector.training.curation import curated_exclusions, select_extremes
from mvector.training.data import SpeakerCropDataset
from mvector.errors import ConfigError, ModelMismatchError
from mvector.losses import MarginScheduler, build_loss
from mvector.lr_scheduler import SCHEDULERS
from mvector.model_dir import load_embedder, read_model_dir, split_weights
from mvector.training.trainer import TRACE_ENV, MVectorTrainer
from training_helpers import BASE_CONFIG, REPO, tiny_overrides, write_augmentation, write_lists

pytestmark = pytest.mark.integration

MODEL_SUBDIR = "TDNN_Fbank"


def train(out, overrides, **kwargs):
    trainer = MVectorTrainer(BASE_CONFIG, overrides=overrides, use_gpu="false",
                             save_model_path=out / "models", log_dir=out / "log")
    state = trainer.train(**kwargs)
    return SimpleNamespace(trainer=trainer, state=state, dir=out / "models" / MODEL_SUBDIR, log=out / "log")


def scalars(log_dir, tag):
    (record,) = sorted(Path(log_dir).glob("vdlrecords.*.log"))
    return [(r.id, r.value) for r in LogReader(file_path=str(record)).get_data("scalar", tag)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two cores shared with other test runs: OpenMP threads that wait on each other run 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("smoke")
    train_list, trials = write_lists(directory, per_speaker=15)
    return SimpleNamespace(dir=directory, train=train_list, trials=trials, aug=write_augmentation(directory))


@pytest.fixture(scope="module")
def trained(data):
    """Two epochs with augmentation and an evaluation after each; the margin ramps inside the run."""
    overrides = tiny_overrides(data.train, data.trials, data.aug, max_epoch=2) + [
        "loss_conf.margin_scheduler_args.increase_start_epoch=0.5",
        "loss_conf.margin_scheduler_args.fix_start_epoch=1.5"]
    return train(data.dir / "run", overrides)


@pytest.mark.data
def test_writes_model_directories_with_metrics(trained):
    spe = trained.trainer.steps_per_epoch
    assert {p.name for p in trained.dir.iterdir()} == {"best_model", "last_model", "epoch_1", "epoch_2"}
    for name in ("last_model", "epoch_1", "epoch_2"):
        assert (trained.dir / name / "training.pth").is_file()
    assert not (trained.dir / "best_model" / "training.pth").exists()  # shipped weights only

    config, weights, state = read_model_dir(trained.dir / "last_model")
    assert state == {**trained.state, "version": state["version"], "frontend": config["preprocess_conf"]}
    assert state["epoch"] == 2 and state["step"] == 2 * spe and state["num_classes"] == 6
    for key in ("eer", "min_dcf", "threshold"):
        assert isinstance(state[key], float) and math.isfinite(state[key])
    assert 0.0 <= state["eer"] <= 1.0
    assert state["margin"] == pytest.approx(0.2)  # fixed from epoch 1.5 on
    assert {k.split(".")[0] for k in weights} == {"backbone", "classifier"}
    assert weights["classifier.weight"].shape == (6, 16)
    epoch_1 = json.loads((trained.dir / "epoch_1" / "model.state").read_text())
    assert epoch_1["step"] == spe and epoch_1["eer"] is not None

    embedder, _, _ = load_embedder(trained.dir / "best_model")
    with torch.no_grad():
        assert embedder(torch.randn(2, 8000) * 0.1).shape == (2, 16)


@pytest.mark.data
def test_visualdl_logs_follow_the_lr_and_margin_schedules(trained):
    conf = trained.trainer.config
    spe, steps = trained.trainer.steps_per_epoch, 2 * trained.trainer.steps_per_epoch
    losses = scalars(trained.log, "train/loss")
    assert [step for step, _ in losses] == list(range(1, steps + 1))  # log_interval 1
    assert [step for step, _ in scalars(trained.log, "test/eer")] == [1, 2]
    assert scalars(trained.log, "test/eer")[-1][1] == pytest.approx(trained.state["eer"], abs=1e-6)

    # Replay the schedules on their own: the logged LR/margin after step s must match.
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=conf["optimizer_conf"]["optimizer_args"]["lr"])
    scheduler = SCHEDULERS.build("WarmupCosineLR", optimizer, spe, 2, **conf["optimizer_conf"]["scheduler_args"])
    loss = build_loss("AAMLoss", margin=0.2)
    margins = MarginScheduler(loss, 0.0, 0.2, int(round(0.5 * spe)), int(round(1.5 * spe)), "exp")
    expected_lr, expected_margin = [], []
    for step in range(1, steps + 1):
        optimizer.step()
        scheduler.step()
        expected_lr.append(optimizer.param_groups[0]["lr"])
        expected_margin.append(margins.step(step))
    assert [v for _, v in scalars(trained.log, "train/lr")] == pytest.approx(expected_lr, rel=1e-5)
    assert [v for _, v in scalars(trained.log, "train/margin")] == pytest.approx(expected_margin, abs=1e-6)
    assert 0 < expected_margin[spe - 1] < 0.2  # the ramp really was inside the run


@pytest.mark.data
def test_loss_decreases_when_overfitting_a_tiny_set(data):
    train_list, _ = write_lists(data.dir / "tiny", per_speaker=8, speakers=3)
    # Cross-entropy on a linear head: a smooth curve (a margin loss at scale 32 jumps about).
    overrides = tiny_overrides(train_list, max_epoch=8) + [
        "dataset_conf.batch_size=8", "dataset_conf.max_duration=1.0", "loss_conf.loss=CELoss",
        "loss_conf.loss_args={}", "model_conf.classifier=Linear", "model_conf.classifier_args={}",
        "optimizer_conf.optimizer_args.lr=0.003", "optimizer_conf.scheduler=WarmupConstantLR",
        "optimizer_conf.scheduler_args={}", "train_conf.keep_epochs=3"]
    run = train(data.dir / "tiny_run", overrides)
    assert sorted(p.name for p in run.dir.glob("epoch_*")) == ["epoch_6", "epoch_7", "epoch_8"]  # the newest three
    losses = [v for _, v in scalars(run.log, "train/loss")]
    assert len(losses) == 8 * run.trainer.steps_per_epoch
    assert np.mean(losses[-4:]) < 0.4 * np.mean(losses[:2])
    assert run.state["margin"] is None  # CELoss has none: logged as a note, not scheduled


@pytest.mark.data
def test_loss_and_head_must_pair(data):
    overrides = tiny_overrides(data.train) + ["loss_conf.loss=CELoss", "loss_conf.loss_args={label_smoothing: 0.1}"]
    with pytest.raises(ConfigError, match=r"loss_conf\.loss 'CELoss'.*model_conf\.classifier 'Cosine'"):
        train(data.dir / "pairing", overrides)


@pytest.mark.data
def test_pretrained_reports_a_different_classifier(trained, data, caplog):
    four_speakers, _ = write_lists(data.dir / "four", per_speaker=6, speakers=4)
    # lr 0 keeps the loaded parameters as they are through the one step.
    overrides = tiny_overrides(four_speakers, max_steps=1) + ["optimizer_conf.optimizer_args.lr=0.0"]
    source = trained.dir / "best_model"
    with caplog.at_level(logging.INFO, logger="mvector.training.trainer"):
        run = train(data.dir / "pretrained", overrides, pretrained=source)
    assert "classifier.weight: shape (6, 16) in" in caplog.text and "vs (4, 16) here, skipped" in caplog.text
    _, given, _ = read_model_dir(source)
    backbone = run.trainer.backbone
    for name, parameter in backbone.named_parameters():
        assert torch.equal(parameter.detach(), split_weights(given, "backbone")[name]), name
    assert run.state["step"] == 1 and run.state["num_classes"] == 4

    narrower = tiny_overrides(four_speakers, max_steps=1) + ["model_conf.model_args.channels=8"]
    with pytest.raises(ModelMismatchError, match="backbone tensor.*--allow_partial"):
        train(data.dir / "narrower", narrower, pretrained=source)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mvector.training.trainer"):
        partial = train(data.dir / "narrower", narrower, pretrained=source, allow_partial=True)
    assert partial.state["step"] == 1 and "backbone.frames.0.weight: shape" in caplog.text


@pytest.mark.data
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_runs_on_cpu(data, dtype):
    run = train(data.dir / f"amp_{dtype}", tiny_overrides(data.train, max_steps=2, amp="true", amp_dtype=dtype))
    assert run.state["step"] == 2
    assert run.trainer.scaler.is_enabled() == (dtype == "float16")
    _, weights, _ = read_model_dir(run.dir / "last_model")
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.data
def test_curation_scores_then_leaves_out_extremes(trained, data, monkeypatch):
    losses_path = data.dir / "losses.tsv"
    assert load_script("score_losses").main(["--model_dir", str(trained.dir / "last_model"), "--out",
                                             str(losses_path), "--use_gpu", "false", "--no_progress"]) == 0
    losses = read_loss_file(losses_path)
    dataset = SpeakerCropDataset(data.train, load_config(BASE_CONFIG, tiny_overrides(data.train))["dataset_conf"])
    assert set(losses) == {u.path for u in dataset.utterances}
    assert all(math.isfinite(v) and v >= 0 for v in losses.values())
    rows = [line.split("\t") for line in losses_path.read_text().splitlines()]
    assert all(int(label) == next(u.label for u in dataset.utterances if u.path == path) for path, label, _ in rows)

    curation = {"enable": True, "start_epoch": 2, "drop_hardest": 0.2, "drop_easiest": 0.1,
                "loss_file": str(losses_path)}
    excluded, _ = curated_exclusions(dataset, curation)
    ranked = sorted(range(len(dataset.utterances)), key=lambda i: losses[dataset.utterances[i].path])
    n = len(ranked)
    assert sorted(excluded) == sorted(ranked[:int(0.1 * n)] + ranked[n - int(0.2 * n):])

    trace = data.dir / "curation_trace"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    overrides = tiny_overrides(data.train, max_epoch=2) + [f"train_conf.curation.{k}={v}" for k, v in curation.items()]
    run = train(data.dir / "curated", overrides)
    spe = run.trainer.steps_per_epoch
    seen = [(int(step), {int(i) for i in batch.split(",")})
            for step, batch in (line.split("\t") for line in (trace / "rank0.tsv").read_text().splitlines())]
    first = set().union(*(s for step, s in seen if step <= spe))
    second = set().union(*(s for step, s in seen if step > spe))
    assert first & set(excluded)  # epoch 1 still trains on them
    assert second and not second & set(excluded)


def test_select_extremes_by_hand():
    losses = [0.5, 3.0, 0.1, 2.0, 1.0, 0.2, 9.0, 0.3, 0.4, 0.6]
    assert select_extremes(losses, 0.2, 0.1).tolist() == [1, 2, 6]  # 2 hardest (9.0, 3.0), 1 easiest (0.1)
    assert select_extremes(losses, 0.0, 0.0).tolist() == []


@pytest.mark.slow
@pytest.mark.data
def test_train_py_errors_are_one_line(data, tmp_path):
    for override, expected in ((f"dataset_conf.train_list={tmp_path / 'missing.txt'}", "train_list"),
                               ("train_conf.max_epochs=3", "max_epochs")):
        result = subprocess.run([sys.executable, "train.py", "--configs", str(BASE_CONFIG), "--override", override,
                                 "--save_model_path", str(tmp_path / "m"), "--log_dir", str(tmp_path / "log"),
                                 "--use_gpu", "false"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.stderr


@pytest.mark.slow
@pytest.mark.data
def test_a_torch_compile_failure_says_how_to_train_without_it(data, tmp_path):
    # No working C++ compiler: what torch.compile meets on a CPU machine without one.
    command = [sys.executable, "train.py", "--configs", str(BASE_CONFIG), "--use_gpu", "false",
               "--save_model_path", str(tmp_path / "m"), "--log_dir", str(tmp_path / "log")]
    for override in tiny_overrides(data.train, max_steps=1, use_compile="true"):
        command += ["--override", override]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "CXX": "/bin/false"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: torch.compile failed") and "use_compile=false" in last, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.data
def test_distillation_pulls_crops_to_the_teachers_utterance_embeddings(trained, data, caplog):
    """A student distilled from the trained model: a head that --pretrained does not bring starts at the
    speakers' mean teacher embeddings, the teacher's table is cached and reused."""
    teacher = trained.dir / "best_model"
    overrides = tiny_overrides(data.train, max_steps=2) + [f"train_conf.distillation.teacher={teacher}",
                                                           "train_conf.distillation.weight=5.0",
                                                           "optimizer_conf.optimizer_args.lr=0.0"]
    with caplog.at_level(logging.INFO, logger="mvector.training.trainer"):
        run = train(data.dir / "distilled", overrides)
    assert "classifier centres set to the teacher's mean embedding" in caplog.text
    cache = torch.load(run.dir / "teacher_embeddings.pt", weights_only=True)
    table = cache["embeddings"]
    dataset = run.trainer.dataset
    assert table.shape == (len(dataset.utterances), 16)
    embedder, _, _ = load_embedder(teacher)
    with torch.inference_mode():
        first = torch.nn.functional.normalize(embedder(torch.from_numpy(dataset.waveform(0))[None]), dim=-1)[0]
    torch.testing.assert_close(table[0], first, rtol=1e-4, atol=1e-5)
    labels = torch.tensor([u.label for u in dataset.utterances])
    centre = torch.nn.functional.normalize(table[labels == 2].mean(0), dim=0)
    # lr 0: the head is still what the teacher set.
    torch.testing.assert_close(run.trainer.classifier.weight[2].detach(), centre, rtol=1e-5, atol=1e-6)

    # The same teacher and list again: the cached table is read, not recomputed; a head that
    # --pretrained brings is kept.
    stamp = (run.dir / "teacher_embeddings.pt").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mvector.training.trainer"):
        again = train(data.dir / "distilled", overrides, pretrained=teacher)
    assert (run.dir / "teacher_embeddings.pt").stat().st_mtime_ns == stamp
    assert "classifier centres set" not in caplog.text
    _, given, _ = read_model_dir(teacher)
    assert torch.equal(again.trainer.classifier.weight.detach(), given["classifier.weight"])


def test_distillation_term_is_weighted_one_minus_cosine():
    from mvector.training.distillation import distillation_loss

    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(distillation_loss(student, teacher)) == pytest.approx(0.5)


@pytest.mark.data
def test_distillation_settings_are_checked(data):
    from mvector.training.augment import build_augmentation
    from mvector.training.distillation import check_distillation_conf

    with pytest.raises(ConfigError, match="distillation.weight must be > 0"):
        check_distillation_conf({"teacher": "t", "weight": 0.0}, None)
    speed_aug = data.dir / "speed.yml"
    speed_aug.write_text("speed: {prob: 0.5}\nreverb: {prob: 0.0}\nnoise: {prob: 0.0}\nvolume: {prob: 0.0}\n",
                         encoding="utf-8")
    speed = build_augmentation(speed_aug).speed
    with pytest.raises(ConfigError, match="speed.prob to 0"):
        check_distillation_conf({"teacher": "t", "weight": 1.0}, speed)
    check_distillation_conf({"teacher": None, "weight": 0.0}, speed)  # no teacher: nothing to check
