"""Distillation from a frozen teacher model: keeps a fine-tuned student's embeddings near the
teacher's while a new head adapts it to the training speakers.

The teacher embeds each training utterance once, whole and clean (as a predictor would embed it),
before training; every crop of that utterance is then pulled towards it with the loss
``weight * (1 - cos(student, teacher))``. So the CPU is spent on the student, not on a second
forward pass per step, and a crop learns to say what the whole utterance says. The table is cached
in the run's model folder, keyed by the teacher's fingerprint and the utterance list.
"""
import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mvector.errors import ConfigError
from mvector.model_dir import load_embedder, model_fingerprint

logger = logging.getLogger(__name__)

CACHE_FILE = "teacher_embeddings.pt"


def check_distillation_conf(conf: dict, speed_perturb) -> None:
    """Distillation needs a teacher and a positive weight; speed-perturbed crops have no teacher target."""
    if conf["teacher"] is None:
        return
    if not conf["weight"] > 0:
        raise ConfigError(f"train_conf.distillation.weight must be > 0 with a teacher, got {conf['weight']!r}")
    if speed_perturb is not None and speed_perturb.prob > 0:
        raise ConfigError("train_conf.distillation: the teacher's embedding of an utterance does not describe "
                          "its speed-perturbed copies; set the augmentation config's speed.prob to 0")


def _utterance_key(dataset, teacher_dir) -> str:
    digest = hashlib.sha256(model_fingerprint(teacher_dir).encode())
    for utterance in dataset.utterances:
        digest.update(f"{utterance.path}\t{utterance.label}\n".encode())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def teacher_table(teacher_dir, dataset, cache_dir, device, progress=True) -> torch.Tensor:
    """``[num_utterances, E]`` L2-normalised teacher embeddings of ``dataset.utterances``, computed
    once and cached in ``cache_dir``."""
    teacher_dir, cache = Path(teacher_dir), Path(cache_dir) / CACHE_FILE
    key = _utterance_key(dataset, teacher_dir)
    if cache.is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if stored.get("key") == key:
            return stored["embeddings"]
    embedder, config, _ = load_embedder(teacher_dir, device)
    if embedder.sample_rate != dataset.sample_rate:
        raise ConfigError(f"train_conf.distillation.teacher {teacher_dir}: runs at {embedder.sample_rate} Hz, "
                          f"the training data at {dataset.sample_rate} Hz")
    rows = []
    for index in tqdm(range(len(dataset.utterances)), desc="teacher embeddings", disable=not progress):
        wav = torch.from_numpy(dataset.waveform(index)).to(device)
        rows.append(F.normalize(embedder(wav[None]).float(), dim=-1)[0].cpu())
    table = torch.stack(rows)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"key": key, "teacher": str(teacher_dir), "embeddings": table}, tmp)
    tmp.replace(cache)
    logger.info("teacher %s: embedded %d utterances (cached in %s)", teacher_dir, len(rows), cache)
    return table


def distillation_loss(embeddings: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` between the student's embeddings and the teacher's."""
    return (1.0 - F.cosine_similarity(embeddings.float(), teacher.float(), dim=-1)).mean()


@torch.no_grad()
def init_head_from_teacher(classifier, table: torch.Tensor, labels) -> bool:
    """Set a cosine head's class centres to the mean teacher embedding of each class, so fine-tuning
    starts from a head that already agrees with the (teacher-initialised) backbone instead of sending
    a random head's gradients into it. False (nothing changed) for a head of another shape."""
    weight = getattr(classifier, "weight", None)
    labels = torch.as_tensor(labels, dtype=torch.long)
    num_classes = int(labels.max()) + 1
    if weight is None or weight.dim() != 2 or weight.shape[1] != table.shape[1] or weight.shape[0] % num_classes:
        return False
    centres = torch.zeros(num_classes, table.shape[1]).index_add_(0, labels, table.float())
    centres = F.normalize(centres, dim=-1)
    # Each of a class's sub-centres (rows class * K + k) starts at its centre.
    weight.copy_(centres.repeat_interleave(weight.shape[0] // num_classes, dim=0).to(weight))
    return True
