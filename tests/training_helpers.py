"""Tiny training set-ups on the shared smoke data, for the trainer, resume and DDP tests."""
import os
import random
import subprocess
import sys
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SMOKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "smoke"
BASE_CONFIG = REPO / "configs" / "tdnn.yml"


def smoke_rows():
    """``[(absolute path, speaker id)]`` of the smoke set (for tests marked ``data``)."""
    from mvector.lists import read_speaker_list

    return read_speaker_list(SMOKE / "list.tsv")


def write_lists(directory, per_speaker=None, speakers=None, num_trials=40, seed=0):
    """Write ``train.txt`` (path, integer label, duration) and ``trials.tsv``; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = smoke_rows()
    names = sorted({speaker for _, speaker in rows})[:speakers]
    labels = {name: i for i, name in enumerate(names)}
    counts = {}
    kept = []
    for path, speaker in rows:
        if speaker in labels and counts.get(speaker, 0) < (per_speaker or len(rows)):
            counts[speaker] = counts.get(speaker, 0) + 1
            kept.append((path, speaker))
    train = directory / "train.txt"
    train.write_text("".join(f"{p}\t{labels[s]}\t{sf.info(p).duration:.4f}\n" for p, s in kept), encoding="utf-8")
    rng = random.Random(seed)
    trials = directory / "trials.tsv"
    lines = []
    for i in range(num_trials):
        first = rng.choice(kept)
        # Half target, half non-target trials.
        pool = [r for r in kept if (r[1] == first[1]) == (i % 2 == 0) and r != first]
        second = rng.choice(pool)
        lines.append(f"{first[0]}\t{second[0]}\t{int(first[1] == second[1])}\n")
    trials.write_text("".join(lines), encoding="utf-8")
    return train, trials


def write_augmentation(directory):
    """Cheap augmentation: no simulated rooms (pyroomacoustics), white noise, SpecAugment."""
    path = Path(directory) / "augmentation.yml"
    path.write_text("speed: {prob: 0.0}\nreverb: {prob: 0.0}\nnoise: {prob: 0.3, generated: [white]}\n"
                    "volume: {prob: 0.2}\nspec_aug: {prob: 0.5}\n", encoding="utf-8")
    return path


def tiny_overrides(train, trials=None, augmentation=None, **train_conf):
    """``--override`` strings for a TDNN of a few thousand weights on 0.5 s crops of 40 Fbank bins."""
    overrides = [f"dataset_conf.train_list={train}", f"dataset_conf.trials={trials or 'null'}",
                 f"dataset_conf.aug_conf_path={augmentation or 'null'}", "dataset_conf.batch_size=16",
                 "dataset_conf.num_workers=0", "dataset_conf.min_duration=0.3", "dataset_conf.max_duration=0.5",
                 "dataset_conf.eval_batch_size=64", "preprocess_conf.method_args.num_mel_bins=40",
                 "model_conf.model_args.channels=16", "model_conf.model_args.embd_dim=16",
                 "train_conf.log_interval=1", "train_conf.save_every_steps=null"]
    overrides += [f"train_conf.{key}={value}" for key, value in train_conf.items()]
    return overrides


def torchrun_train(config, overrides, folder, processes=2, env=None):
    """``train.py`` under torchrun on ``processes`` CPU processes (gloo, one thread each), models and
    logs under ``folder``; the finished process, its output captured."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "train.py", "--configs", str(config), "--use_gpu", "false",
               "--save_model_path", str(Path(folder) / "models"), "--log_dir", str(Path(folder) / "log")]
    for override in overrides:
        command += ["--override", override]
    return subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=300)
