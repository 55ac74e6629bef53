"""Sample-loss curation, after the AISHELL ECAPA-TDNN study.

A trained model scores every training utterance's loss (``score_losses``, written as
``path<TAB>label<TAB>loss``). Later training epochs can then leave out the hardest fraction
(mostly mislabelled or broken audio) and the easiest fraction (already learnt, little gradient):
``train_conf.curation`` and ``curated_exclusions``.
"""
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mvector.device import loader_workers
from mvector.errors import ConfigError, ModelMismatchError
from mvector.lists import read_loss_file
from mvector.losses.base import MarginLoss
from mvector.model_dir import MODEL_FILE, load_state_strict, read_model_dir, split_weights
from mvector.training.data import SpeakerCropDataset, collate_waveforms
from mvector.training.graph import build_train_graph


def check_curation_conf(curation: dict) -> None:
    """Fail before training starts on fractions out of range or a missing loss file."""
    if not curation["enable"]:
        return
    for key in ("drop_hardest", "drop_easiest"):
        if not 0 <= curation[key] < 1:
            raise ConfigError(f"train_conf.curation.{key} must be a fraction in [0, 1), got {curation[key]!r}")
    if curation["drop_hardest"] + curation["drop_easiest"] >= 1:
        raise ConfigError(f"train_conf.curation: drop_hardest + drop_easiest must stay below 1, got "
                          f"{curation['drop_hardest']} + {curation['drop_easiest']}")
    if curation["start_epoch"] < 1:
        raise ConfigError(f"train_conf.curation.start_epoch must be >= 1, got {curation['start_epoch']}")
    loss_file = curation["loss_file"]
    if not loss_file or not Path(loss_file).is_file():
        raise ConfigError(f"train_conf.curation.loss_file: loss file not found: {loss_file!r} "
                          f"(write one with score_losses.py)")


def select_extremes(losses, drop_hardest: float, drop_easiest: float) -> np.ndarray:
    """Positions of the ``drop_hardest`` fraction of highest and ``drop_easiest`` of lowest losses."""
    losses = np.asarray(losses, dtype=np.float64)
    order = np.argsort(losses, kind="stable")  # ties broken by position: reproducible
    n_hard, n_easy = int(len(losses) * drop_hardest), int(len(losses) * drop_easiest)
    return np.sort(np.concatenate([order[:n_easy], order[len(order) - n_hard:]]))


def curated_exclusions(dataset, curation: dict):
    """Utterance indices of ``dataset`` to leave out, and a one-line summary.

    Utterances the loss file does not score are kept (and counted in the summary).
    """
    losses = read_loss_file(curation["loss_file"])
    scored = [(index, losses[u.path]) for index, u in enumerate(dataset.utterances) if u.path in losses]
    if not scored:
        raise ConfigError(f"train_conf.curation.loss_file {curation['loss_file']}: none of its paths is in "
                          f"the training list (was it scored on another list?)")
    positions = select_extremes([loss for _, loss in scored], curation["drop_hardest"], curation["drop_easiest"])
    excluded = [scored[p][0] for p in positions]
    unscored = len(dataset.utterances) - len(scored)
    summary = (f"leaving out {len(excluded)} of {len(dataset.utterances)} utterances "
               f"({curation['drop_hardest']:.1%} hardest, {curation['drop_easiest']:.1%} easiest by loss)"
               + (f"; {unscored} not in the loss file are kept" if unscored else ""))
    return excluded, summary


class _CentralCrops(Dataset):
    """Whole utterances of a training set (no augmentation), cut to their central ``max_samples``."""

    def __init__(self, dataset: SpeakerCropDataset, max_samples):
        self.dataset = dataset
        self.max_samples = max_samples

    def __len__(self):
        return len(self.dataset.utterances)

    def __getitem__(self, index):
        wav = self.dataset.waveform(index)
        if self.max_samples and len(wav) > self.max_samples:
            start = (len(wav) - self.max_samples) // 2
            wav = wav[start:start + self.max_samples]
        return np.ascontiguousarray(wav, dtype=np.float32), self.dataset.utterances[index].label, index


def score_losses(model_dir, train_list=None, device="cpu", batch_size=None, max_duration=None,
                 num_workers=None, progress=True):
    """Each training utterance's loss under the model of ``model_dir``: ``[(path, label, loss), ...]``.

    The utterance is scored whole (or its central ``max_duration`` seconds; default
    ``dataset_conf.eval_max_duration``), without augmentation, with the margin the model was
    trained with at its checkpoint. ``train_list`` defaults to the list the model was trained on.
    """
    model_dir = Path(model_dir)
    config, weights, state = read_model_dir(model_dir)
    where = str(model_dir / MODEL_FILE)
    data_conf = config["dataset_conf"]
    train_list = train_list or data_conf["train_list"]
    if not Path(train_list).is_file():
        raise ConfigError(f"training list not found: {train_list}")
    if "num_classes" not in state:
        raise ModelMismatchError(f"{model_dir}: model.state has no num_classes; is it a training checkpoint?")
    graph = build_train_graph(config, state["num_classes"])
    for part, module in graph.parts.items():
        load_state_strict(module, split_weights(weights, part), where)
    embedder, classifier, loss_fn = graph.embedder(), graph.classifier, graph.loss
    if state.get("margin") is not None and isinstance(loss_fn, MarginLoss):
        loss_fn.update(state["margin"])

    dataset = SpeakerCropDataset(train_list, data_conf, preload=False)
    if dataset.num_speakers != state["num_classes"]:
        raise ModelMismatchError(f"{train_list} has {dataset.num_speakers} speaker labels but the model in "
                                 f"{model_dir} was trained for {state['num_classes']} classes")
    seconds = data_conf["eval_max_duration"] if max_duration is None else max_duration
    max_samples = int(round(seconds * dataset.sample_rate)) if seconds else None
    # Similar lengths together: less padding to compute.
    order = sorted(range(len(dataset.utterances)), key=lambda i: dataset.utterances[i].duration)
    size = batch_size or data_conf["eval_batch_size"]
    batches = [order[i:i + size] for i in range(0, len(order), size)]
    loader = DataLoader(_CentralCrops(dataset, max_samples), batch_sampler=batches, collate_fn=collate_waveforms,
                        num_workers=loader_workers(data_conf["num_workers"] if num_workers is None else num_workers))
    embedder, classifier, loss_fn = embedder.to(device).eval(), classifier.to(device).eval(), loss_fn.to(device)
    losses = {}
    with torch.inference_mode():
        for waveforms, lengths, labels, indices in tqdm(loader, desc="scoring", unit="batch", disable=not progress):
            waveforms, lengths, labels = waveforms.to(device), lengths.to(device), labels.to(device)
            embeddings = embedder(waveforms, lengths)
            outputs = classifier(embeddings)
            for row, index in enumerate(indices.tolist()):
                # Losses average over their batch: one row at a time gives per-utterance values.
                args = (outputs[row:row + 1], labels[row:row + 1])
                if loss_fn.needs_embeddings:
                    args += (embeddings[row:row + 1],)
                losses[index] = float(loss_fn(*args))
    return [(u.path, u.label, losses[i]) for i, u in enumerate(dataset.utterances)]
