"""A training run killed with SIGKILL mid-epoch resumes exactly where its last checkpoint was."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mvector.model_dir import read_model_dir
from mvector.training.trainer import TRACE_ENV, MVectorTrainer
from training_helpers import BASE_CONFIG, REPO, tiny_overrides, write_augmentation, write_lists

pytestmark = pytest.mark.integration

SAVE_EVERY = 3
MAX_EPOCH = 3


def overrides(directory):
    train_list, _ = write_lists(directory, per_speaker=15)
    # Augmentation and SpecAugment on: the resumed run must replay their random draws too. The
    # margin ramps across the kill point.
    return tiny_overrides(train_list, augmentation=write_augmentation(directory), max_epoch=MAX_EPOCH,
                          save_every_steps=SAVE_EVERY) + [
        "loss_conf.margin_scheduler_args.increase_start_epoch=0.5",
        "loss_conf.margin_scheduler_args.fix_start_epoch=2.5"]


def train_command(directory, args, extra=()):
    command = [sys.executable, "train.py", "--configs", str(BASE_CONFIG), "--use_gpu", "false",
               "--save_model_path", str(directory / "models"), "--log_dir", str(directory / "log"), *extra]
    for override in args:
        command += ["--override", override]
    return command


def trace(directory):
    """``{step: utterance indices}`` a run wrote to its batch trace."""
    lines = (Path(directory) / "rank0.tsv").read_text(encoding="utf-8").splitlines()
    return {int(step): batch for step, batch in (line.split("\t") for line in lines)}


def read_state(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):  # not written yet (or, briefly, being replaced)
        return None


@pytest.mark.slow
@pytest.mark.data
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    args = overrides(tmp_path)
    # The reference: the same run, uninterrupted, in this process (one thread, as the child).
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "trace_full"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = MVectorTrainer(BASE_CONFIG, overrides=args, use_gpu="false",
                                   save_model_path=tmp_path / "full" / "models", log_dir=tmp_path / "full" / "log")
        reference.train()
    finally:
        torch.set_num_threads(threads)
    steps_per_epoch = reference.steps_per_epoch
    assert steps_per_epoch > SAVE_EVERY + 1  # so some step checkpoints fall mid-epoch

    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", TRACE_ENV: str(tmp_path / "trace_killed")}
    state_file = run_dir / "models" / "TDNN_Fbank" / "last_model" / "model.state"
    child = subprocess.Popen(train_command(run_dir, args), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    killed_at = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            state = read_state(state_file)
            # A step checkpoint inside an epoch, past the first epoch's start.
            if state and state["step"] >= 2 * SAVE_EVERY and 0 < state["epoch_step"] < steps_per_epoch:
                os.kill(child.pid, signal.SIGKILL)
                killed_at = state
                break
            time.sleep(0.005)
    finally:
        if child.poll() is None and killed_at is None:
            child.kill()
        _, stderr = child.communicate(timeout=60)
    assert killed_at is not None, f"the run ended (rc {child.returncode}) before a mid-epoch checkpoint:\n{stderr}"
    assert child.returncode == -signal.SIGKILL
    # The checkpoint on disk may be a later one than the one seen: the kill raced the next save.
    checkpoint = read_state(state_file)
    assert checkpoint["step"] < MAX_EPOCH * steps_per_epoch

    env[TRACE_ENV] = str(tmp_path / "trace_resumed")
    resumed = subprocess.run(train_command(run_dir, args, ["--resume"]), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {checkpoint['step']}" in resumed.stderr

    # It went on at the step after the checkpoint, with the very batches the reference trained on.
    full, again = trace(tmp_path / "trace_full"), trace(tmp_path / "trace_resumed")
    assert min(again) == checkpoint["step"] + 1 and max(again) == max(full) == MAX_EPOCH * steps_per_epoch
    assert all(again[step] == full[step] for step in again)

    _, weights, state = read_model_dir(run_dir / "models" / "TDNN_Fbank" / "last_model")
    _, reference_weights, reference_state = read_model_dir(tmp_path / "full" / "models" / "TDNN_Fbank" / "last_model")
    for key in ("epoch", "epoch_step", "step", "lr", "margin", "num_classes"):
        assert state[key] == reference_state[key], key
    # Same optimizer state, schedules and random draws: the same weights, bit for bit.
    assert weights.keys() == reference_weights.keys()
    for key in weights:
        assert torch.equal(weights[key], reference_weights[key]), key
    # Names starting with '.' are what a kill mid-save may leave: temporary or replaced directories.
    assert sorted(p.name for p in (run_dir / "models" / "TDNN_Fbank").iterdir() if not p.name.startswith(".")) == \
        sorted(["last_model"] + [f"epoch_{e}" for e in range(1, MAX_EPOCH + 1)])


@pytest.mark.data
def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    result = subprocess.run(train_command(tmp_path, overrides(tmp_path), ["--resume"]), cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --resume: nothing to resume: "
        f"{tmp_path / 'models' / 'TDNN_Fbank' / 'last_model' / 'training.pth'} not found"]


@pytest.mark.data
@pytest.mark.parametrize("max_steps", [5])
def test_max_steps_stops_and_saves_last_model(tmp_path, max_steps):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = MVectorTrainer(BASE_CONFIG, overrides=overrides(tmp_path) + [f"train_conf.max_steps={max_steps}"],
                                 use_gpu="false", save_model_path=tmp_path / "models", log_dir=tmp_path / "log")
        state = trainer.train()
    finally:
        torch.set_num_threads(threads)
    assert state["step"] == max_steps
    _, _, saved = read_model_dir(tmp_path / "models" / "TDNN_Fbank" / "last_model")
    assert saved["step"] == max_steps and saved["epoch"] == 1 and saved["epoch_step"] == max_steps


@pytest.mark.slow
@pytest.mark.data
def test_ctrl_c_stops_with_one_line_and_keeps_the_finished_epochs(tmp_path):
    # Every epoch kept (a tiny epoch takes a quarter of a second: the default keep_epochs would remove
    # epoch_1 before it is looked for); stderr into a file, which never fills up as a pipe would.
    args = tiny_overrides(write_lists(tmp_path, per_speaker=15)[0], max_epoch=1000, save_every_steps=SAVE_EVERY,
                          keep_epochs="null")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"
    with open(log, "w", encoding="utf-8") as err:
        # Started as a shell starts a background job: SIGINT ignored, which train.py must undo.
        child = subprocess.Popen(train_command(tmp_path, args), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                 stderr=err, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    first_epoch = tmp_path / "models" / "TDNN_Fbank" / "epoch_1" / "model.state"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None and read_state(first_epoch) is None:
            time.sleep(0.1)
        assert child.poll() is None, "training ended before it could be interrupted"
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    stderr = log.read_text(encoding="utf-8")
    assert child.returncode == 130
    assert "Traceback" not in stderr and "interrupted" in stderr.splitlines()[-1] and "--resume" in stderr
    assert read_model_dir(first_epoch.parent)[1]


class _Payload:
    """Unpickling this runs a command: what a poisoned checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_training_state_is_read_with_weights_only_and_a_poisoned_file_runs_nothing(tmp_path):
    import random

    from mvector.errors import ModelMismatchError
    from mvector.training.trainer import load_training_state, rng_state, set_rng_state

    device = torch.device("cpu")
    torch.save({"rng": [rng_state(device)], "global_step": 3}, tmp_path / "new.pth")
    state = load_training_state(tmp_path / "new.pth")
    expected = (random.random(), np.random.random(), torch.rand(1))
    set_rng_state(state["rng"][0], device)
    assert (random.random(), np.random.random(), torch.rand(1)) == expected  # every stream restored

    # Written before the RNG states became tensors: numpy's state as an array, still read.
    older = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"rng": [older]}, tmp_path / "older.pth")
    expected = np.random.random()
    set_rng_state(load_training_state(tmp_path / "older.pth")["rng"][0], device)
    assert np.random.random() == expected

    marker = tmp_path / "pwned"
    torch.save({"rng": [_Payload(marker)]}, tmp_path / "poisoned.pth")
    with pytest.raises(ModelMismatchError, match=r"poisoned.pth: cannot be read safely .*posix.system.*--pretrained"):
        load_training_state(tmp_path / "poisoned.pth")
    assert not marker.exists()
    (tmp_path / "cut.pth").write_bytes((tmp_path / "new.pth").read_bytes()[:100])
    with pytest.raises(ModelMismatchError, match="cut.pth: cannot be read safely"):
        load_training_state(tmp_path / "cut.pth")
