"""scripts/device_train.sh, the one-call GPU training run, end to end on the CPU: a tiny model on the
smoke set whose torch.compile fails (no C++ compiler), so it goes on without it, then stopped by its
time limit, must still return the fp16 models and the log."""
import os
import subprocess
import sys

import pytest
import torch

from mvector.model_dir import load_embedder, read_model_dir
from training_helpers import REPO, SMOKE, smoke_rows, write_augmentation

pytestmark = pytest.mark.integration

TINY = ["--use_gpu", "false", "--override", "train_conf.use_compile=true", "--override", "train_conf.max_epoch=1000",
        "--override", "dataset_conf.num_workers=0", "--override", "dataset_conf.batch_size=16",
        "--override", "dataset_conf.min_duration=0.3", "--override", "dataset_conf.max_duration=0.5",
        "--override", "preprocess_conf.method_args.num_mel_bins=40",
        "--override", "model_conf.model_args.channels=16", "--override", "model_conf.model_args.embd_dim=16"]


@pytest.mark.slow
@pytest.mark.data
def test_after_a_failed_compile_and_at_its_time_limit_it_returns_the_last_epochs_in_fp16(tmp_path):
    smoke_rows()  # skips where ../shared/data is absent
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    (data / "train").symlink_to(SMOKE)
    augmentation = write_augmentation(tmp_path)
    env = {**os.environ, "OUT": str(out), "DATA": str(data), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "CXX": "/bin/false"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "device_train.sh"), "45", *TINY,
                           "--override", f"dataset_conf.aug_conf_path={augmentation}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "torch.compile failed" in log and "retrying without torch.compile" in log
    assert "exit status 124" in log and "interrupted; finished epochs" in log and "Traceback" not in log
    assert (data / "lists" / "train_list.txt").is_file()  # beside the data, not over the user's dataset/
    epochs = sorted((data / "run").glob("*/epoch_*"), key=lambda p: int(p.name.split("_")[1]))
    assert len(epochs) >= 2
    _, _, averaged = read_model_dir(out / "avg_last5")
    assert averaged["averaged_from"] == [str(p) for p in epochs[-5:]]
    _, _, last = read_model_dir(out / "last")
    assert last["averaged_from"] == [str(epochs[-1])]
    for model in ("last", "avg_last5"):
        stored = torch.load(out / model / "model.pth")
        assert all(k.startswith("backbone.") for k in stored)
        assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
        embedder, config, _ = load_embedder(out / model)
        assert config["model_conf"]["model"] == "EcapaTdnn"
        with torch.no_grad():
            assert embedder(torch.randn(2, 8000), torch.tensor([8000, 6000])).shape == (2, 16)
