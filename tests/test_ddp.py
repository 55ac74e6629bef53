"""train.py under torchrun: two CPU processes (gloo) split the data, rank 0 alone evaluates and saves."""

import pytest
import torch

from mvector.config import load_config
from mvector.training.data import CropSampler, SpeakerCropDataset
from mvector.model_dir import read_model_dir
from mvector.training.trainer import TRACE_ENV
from training_helpers import BASE_CONFIG, REPO, tiny_overrides, torchrun_train, write_lists

pytestmark = pytest.mark.integration

WORLD = 2


@pytest.mark.slow
@pytest.mark.data
def test_torchrun_two_cpu_processes(tmp_path):
    train_list, trials = write_lists(tmp_path, per_speaker=15, num_trials=20)
    overrides = tiny_overrides(train_list, trials, max_epoch=1)
    result = torchrun_train(BASE_CONFIG, overrides, tmp_path, WORLD, env={TRACE_ENV: str(tmp_path / "trace")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("training TDNN on cpu x2") == 1  # only rank 0 logs
    assert result.stderr.count("epoch 1: EER") == 1  # only rank 0 evaluates

    # Each rank trained on its own share: the sampler's split for its rank, step by step.
    dataset = SpeakerCropDataset(train_list, load_config(BASE_CONFIG, overrides)["dataset_conf"])
    batches = {}
    for rank in range(WORLD):
        sampler = CropSampler(dataset, seed=1000, num_replicas=WORLD, rank=rank)
        sampler.set_epoch(1)
        keys = [utterance for utterance, _, _ in sampler]
        expected = [keys[i:i + 16] for i in range(0, len(keys) - 15, 16)]
        lines = (tmp_path / "trace" / f"rank{rank}.tsv").read_text().splitlines()
        traced = [[int(i) for i in line.split("\t")[1].split(",")] for line in lines]
        assert [int(line.split("\t")[0]) for line in lines] == list(range(1, len(expected) + 1))
        assert traced == expected
        batches[rank] = traced
    assert all(a != b for a, b in zip(batches[0], batches[1]))

    # One checkpoint set, written once: no second writer's leftovers beside it.
    model_dir = tmp_path / "models" / "TDNN_Fbank"
    assert sorted(p.name for p in model_dir.iterdir()) == ["best_model", "epoch_1", "last_model"]
    _, _, state = read_model_dir(model_dir / "last_model")
    assert state["step"] == len(batches[0]) and state["eer"] is not None
    training = torch.load(model_dir / "last_model" / "training.pth", weights_only=False)
    assert training["world_size"] == WORLD and len(training["rng"]) == WORLD
    # Ranks are seeded apart (SpecAugment, dropout): their saved random streams differ.
    assert not torch.equal(training["rng"][0]["torch"], training["rng"][1]["torch"])


@pytest.mark.slow
@pytest.mark.data
def test_torchrun_with_speaker_batches_gives_each_rank_its_own_batches(tmp_path):
    """GE2E on P x K batches under torchrun: each rank trains exactly its SpeakerBatchSampler share."""
    from mvector.training.data import SpeakerBatchSampler

    config = REPO / "configs" / "lstm_ge2e.yml"
    train_list, trials = write_lists(tmp_path, per_speaker=15, num_trials=20)
    overrides = [o for o in tiny_overrides(train_list, trials, max_epoch=1)
                 if not o.startswith(("model_conf.model_args.channels", "dataset_conf.batch_size"))]
    overrides += ["model_conf.model_args.hidden_size=8", "model_conf.model_args.num_layers=1",
                  "dataset_conf.batch_size=6", "dataset_conf.speakers_per_batch=3", "dataset_conf.utterances_per_speaker=2"]
    result = torchrun_train(config, overrides, tmp_path, WORLD, env={TRACE_ENV: str(tmp_path / "trace")})
    assert result.returncode == 0, result.stderr[-3000:]

    dataset = SpeakerCropDataset(train_list, load_config(config, overrides)["dataset_conf"])
    traced = {}
    for rank in range(WORLD):
        sampler = SpeakerBatchSampler(dataset, 3, 2, seed=1000, num_replicas=WORLD, rank=rank)
        sampler.set_epoch(1)
        expected = [[utterance for utterance, _, _ in batch] for batch in sampler]
        lines = (tmp_path / "trace" / f"rank{rank}.tsv").read_text().splitlines()
        traced[rank] = [[int(i) for i in line.split("\t")[1].split(",")] for line in lines]
        assert traced[rank] == expected and len(expected) > 0
    assert len(traced[0]) == len(traced[1])
    assert all(a != b for a, b in zip(traced[0], traced[1]))
