"""P x K batches (SpeakerBatchSampler) and the configs of the systems that need them: the LSTM with
GE2E, the Transformer and ResCNN with the plain triplet loss, each trained an epoch on the smoke
set, evaluated, enrolled and recognised."""
from pathlib import Path

import numpy as np
import pytest
import torch

from mvector.config import load_config
from mvector.errors import ConfigError
from mvector.training.data import SpeakerBatchSampler, SpeakerCropDataset
from training_helpers import REPO, tiny_overrides, write_lists

pytestmark = pytest.mark.integration

CONFIGS = REPO / "configs"


@pytest.mark.unit
@pytest.mark.parametrize("overrides, message", [
    (["loss_conf.loss=GE2ELoss", "loss_conf.loss_args={}"], "needs P x K batches: set 'dataset_conf.speakers_per_batch' "
                                                             "and 'dataset_conf.utterances_per_speaker'"),
    (["loss_conf.loss=TripletLoss", "loss_conf.loss_args={}"], "TripletLoss compares a speaker's utterances"),
    (["dataset_conf.speakers_per_batch=8"], "go together: set both or neither"),
    (["dataset_conf.speakers_per_batch=8", "dataset_conf.utterances_per_speaker=4"], "batch_size' is 64 but P x K "
                                                                                     "batches hold 8 x 4 = 32"),
    (["dataset_conf.speakers_per_batch=1", "dataset_conf.utterances_per_speaker=64"], "at least 2"),
])
def test_a_config_without_the_batches_its_loss_needs_names_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(CONFIGS / "lstm.yml", overrides=overrides)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    train, trials = write_lists(tmp_path_factory.mktemp("pk"), per_speaker=15)
    return train, trials


def dataset(train):
    config = load_config(CONFIGS / "tdnn.yml", overrides=tiny_overrides(train))
    return SpeakerCropDataset(train, config["dataset_conf"], seed=3)


@pytest.mark.data
def test_batches_hold_p_speakers_of_k_crops_and_replay_per_epoch(smoke):
    data = dataset(smoke[0])
    sampler = SpeakerBatchSampler(data, speakers=3, utterances=4, seed=7)
    sampler.set_epoch(1)
    first = list(sampler)
    assert len(first) == len(sampler) > 0
    labels = {index: data.utterances[index].label for index in range(len(data.utterances))}
    for batch in first:
        speakers = [labels[utterance] for utterance, _, _ in batch]
        assert len(batch) == 12 and len(set(speakers)) == 3
        assert all(speakers.count(s) == 4 for s in set(speakers))
    assert list(sampler) == first  # the same epoch replays (a resume skips into it)
    sampler.set_epoch(2)
    second = list(sampler)
    assert len(second) == len(first) and second != first


@pytest.mark.data
def test_ranks_get_disjoint_batches_of_the_same_count(smoke):
    data = dataset(smoke[0])
    ranks = [SpeakerBatchSampler(data, speakers=2, utterances=2, seed=7, num_replicas=2, rank=r) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(3)
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == len(batches[1]) > 0
    whole = SpeakerBatchSampler(data, speakers=2, utterances=2, seed=7)
    whole.set_epoch(3)
    everything = list(whole)
    assert batches[0] == everything[0::2][: len(batches[0])] and batches[1] == everything[1::2][: len(batches[1])]
    assert not {tuple(b) for b in map(tuple, batches[0])} & {tuple(b) for b in map(tuple, batches[1])}


# name -> overrides making it tiny: 3 speakers x 2 crops, a few channels.
SYSTEMS = {
    "lstm_ge2e": ["model_conf.model_args.hidden_size=16", "model_conf.model_args.num_layers=2"],
    "transformer_triplet": ["model_conf.model_args.d_model=8", "model_conf.model_args.num_heads=2"],
    "rescnn_triplet": ["model_conf.model_args.channels=[4,4,8,8]", "model_conf.model_args.blocks=1"],
}


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_each_system_trains_evaluates_enrols_and_recognises(system, smoke, tmp_path):
    from mvector.inference.predictor import MVectorPredictor
    from mvector.training.trainer import MVectorTrainer

    train, trials = smoke
    base = [o for o in tiny_overrides(train, trials, max_epoch=1)
            if not o.startswith(("model_conf.model_args.channels", "dataset_conf.batch_size"))]
    overrides = base + SYSTEMS[system] + ["model_conf.model_args.embd_dim=16", "dataset_conf.batch_size=6",
                                          "dataset_conf.speakers_per_batch=3", "dataset_conf.utterances_per_speaker=2"]
    torch.manual_seed(0)
    trainer = MVectorTrainer(CONFIGS / f"{system}.yml", overrides=overrides, use_gpu="false",
                             save_model_path=tmp_path / "models", log_dir=tmp_path / "log")
    state = trainer.train()
    assert np.isfinite(state["eer"]) and state["step"] == trainer.steps_per_epoch > 0
    (model_dir,) = [p / "last_model" for p in (tmp_path / "models").iterdir()]
    with MVectorPredictor(model_dir, audio_db_path=tmp_path / "db", threshold=0.0) as predictor:
        rows = [line.split("\t") for line in Path(train).read_text().splitlines()]
        path = max(rows, key=lambda row: float(row[2]))[0]
        predictor.register(path, "first")
        name, score = predictor.recognition(path)
        assert name == "first" and score > 0.99


@pytest.mark.data
def test_a_resumed_epoch_takes_the_remaining_speaker_batches(smoke):
    """The resume path (checkpoint.loader_from_batch) skips into a P x K epoch as into any other."""
    from mvector.training.checkpoint import loader_from_batch
    from mvector.training.data import build_train_loader, epoch_sampler

    data = dataset(smoke[0])
    loader = build_train_loader(data, 6, 0, seed=5, speakers_per_batch=3, utterances_per_speaker=2)
    epoch_sampler(loader).set_epoch(2)
    whole = [labels.tolist() for _, _, labels, _ in loader]
    resumed = [labels.tolist() for _, _, labels, _ in loader_from_batch(loader, 4)]
    assert len(whole) == len(loader) > 4 and resumed == whole[4:]
