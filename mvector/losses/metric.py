"""Metric losses on a batch of P speakers x K utterances each (``dataset_conf.speakers_per_batch``
and ``utterances_per_speaker``): GE2E's softmax loss and a plain triplet loss on cosines."""
import torch
import torch.nn.functional as F
from torch import nn

from mvector.errors import ConfigError
from mvector.losses.base import Loss, MarginLoss, check_labels, check_number


def speaker_groups(owner: str, embeddings, labels):
    """``[P, K, E]`` embeddings grouped by speaker, in order of first appearance; ConfigError unless
    every speaker in the batch has the same number K >= 2 of utterances (a P x K batch)."""
    if not torch.is_tensor(embeddings) or embeddings.dim() != 2:
        shape = tuple(embeddings.shape) if torch.is_tensor(embeddings) else type(embeddings).__name__
        raise ConfigError(f"{owner}: embeddings must be a [batch, dim] tensor, got {shape}")
    labels = check_labels(owner, labels, embeddings.shape[0])
    speakers, counts = torch.unique(labels, return_counts=True)
    if len(speakers) < 2 or int(counts.min()) < 2 or int(counts.min()) != int(counts.max()):
        raise ConfigError(f"{owner}: needs P x K batches (P >= 2 speakers with the same K >= 2 utterances each), "
                          f"got {len(speakers)} speaker(s) with {counts.tolist()} utterances; set "
                          "dataset_conf.speakers_per_batch and dataset_conf.utterances_per_speaker")
    order = torch.argsort(labels, stable=True)
    return embeddings[order].reshape(len(speakers), int(counts[0]), -1)


class GE2ELoss(Loss):
    """The generalised end-to-end loss, softmax variant (Wan et al., 2018): every utterance's scaled
    cosine ``w * cos + b`` to each speaker's centroid (its own speaker's without itself), trained to
    pick its own speaker; ``w`` (kept positive) and ``b`` are learnt. The head's outputs are unused."""

    needs_embeddings = True
    needs_speaker_batches = True

    def __init__(self, init_scale=10.0, init_bias=-5.0):
        super().__init__()
        check_number("GE2ELoss", "init_scale", init_scale, low=0.0, open_low=True)
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(check_number("GE2ELoss", "init_bias", init_bias))))

    def forward(self, outputs, labels, embeddings=None):
        with torch.autocast(device_type=labels.device.type, enabled=False):
            groups = F.normalize(speaker_groups("GE2ELoss", embeddings, labels).float(), dim=-1)
            speakers, utterances, _ = groups.shape
            totals = groups.sum(dim=1)
            centroids = F.normalize(totals, dim=-1)                                           # [P, E]
            exclusive = F.normalize(totals[:, None, :] - groups, dim=-1)                      # [P, K, E]
            cosines = torch.einsum("pke,qe->pkq", groups, centroids)                          # [P, K, P]
            own = (groups * exclusive).sum(dim=-1)                                            # [P, K]
            same = torch.eye(speakers, dtype=torch.bool, device=groups.device)[:, None, :]
            cosines = torch.where(same, own[:, :, None], cosines)
            logits = self.scale.clamp(min=1e-6) * cosines + self.bias
            targets = torch.arange(speakers, device=groups.device).repeat_interleave(utterances)
            return F.cross_entropy(logits.reshape(speakers * utterances, speakers), targets)


class TripletLoss(MarginLoss):
    """A plain triplet loss on cosines (as the course project SpeakerRecognitionFromScratch trains its
    encoders): ``max(0, cos(a, n) - cos(a, p) + margin)`` averaged over every anchor, positive and
    negative in a P x K batch (the course project's ``alpha`` is the margin, 0.1 by default)."""

    needs_embeddings = True
    needs_speaker_batches = True

    def __init__(self, margin=0.1):
        super().__init__(check_number("TripletLoss", "margin", margin, low=0.0))

    def forward(self, outputs, labels, embeddings=None):
        with torch.autocast(device_type=labels.device.type, enabled=False):
            groups = F.normalize(speaker_groups("TripletLoss", embeddings, labels).float(), dim=-1)
            flat = groups.reshape(-1, groups.shape[-1])
            speaker = torch.arange(groups.shape[0], device=flat.device).repeat_interleave(groups.shape[1])
            similarity = flat @ flat.t()
            same = speaker[:, None] == speaker[None, :]
            positive = same & ~torch.eye(len(flat), dtype=torch.bool, device=flat.device)
            # [anchor, positive, negative]: every valid combination, as a mean over the valid ones.
            losses = F.relu(similarity[:, None, :] - similarity[:, :, None] + self.margin)
            valid = positive[:, :, None] & ~same[:, None, :]
            return losses[valid].mean()
