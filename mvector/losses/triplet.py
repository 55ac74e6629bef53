"""Triplet loss on cosine similarity with in-batch hard mining, plus an optional AAM class loss."""
import torch
import torch.nn.functional as F

from mvector.errors import ConfigError
from mvector.losses.aam import AAMLoss
from mvector.losses.base import MarginLoss, check_batch, check_labels, check_number


def masked_mean(values, mask):
    """Mean of ``values`` where ``mask`` holds; 0 (still in the graph) when it holds nowhere."""
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp(min=1)


class TripletAngularMarginLoss(MarginLoss):
    """Hard-mined triplet loss on cosine similarity, as in the reference mvector toolkit.

    For each anchor, the least similar same-class sample (the anchor itself counts, so a speaker
    seen once in the batch still repels negatives) and the most similar other-class sample:
        ranking  = max(0, cos_an - cos_ap + margin)
        absolute = max(0, ap_value - cos_ap) + max(0, cos_an - an_value)   (if add_absolute)
    plus, with ``add_class_loss``, AAM (scale ``class_loss_scale``, margin ``class_loss_margin``)
    on the head's cosines. Anchors with no negative in the batch are left out of the negative terms.
    ``update`` (the margin scheduler) changes the triplet margin, not the class-loss margin.
    """

    needs_embeddings = True

    def __init__(self, margin=0.5, normalize_feature=True, add_absolute=True, absolute_loss_weight=1.0,
                 ap_value=0.8, an_value=0.4, add_class_loss=True, class_loss_scale=32, class_loss_margin=0.2):
        super().__init__(margin)
        name = type(self).__name__
        self.normalize_feature = bool(normalize_feature)
        self.add_absolute = bool(add_absolute)
        self.absolute_loss_weight = check_number(name, "absolute_loss_weight", absolute_loss_weight, low=0.0)
        self.ap_value = check_number(name, "ap_value", ap_value)
        self.an_value = check_number(name, "an_value", an_value)
        self.class_loss = AAMLoss(margin=class_loss_margin, scale=class_loss_scale) if add_class_loss else None

    def forward(self, outputs, labels, embeddings=None):
        name = type(self).__name__
        if embeddings is None:
            raise ConfigError(f"{name}: needs the embeddings (forward(outputs, labels, embeddings=...))")
        if not torch.is_tensor(embeddings) or embeddings.dim() != 2:
            shape = tuple(embeddings.shape) if torch.is_tensor(embeddings) else type(embeddings).__name__
            raise ConfigError(f"{name}: embeddings must be a [batch, dim] tensor, got {shape}")
        if self.class_loss is not None:
            labels = check_batch(name, outputs, labels)
            if outputs.shape[0] != embeddings.shape[0]:
                raise ConfigError(f"{name}: outputs batch {outputs.shape[0]} != embeddings batch "
                                  f"{embeddings.shape[0]}")
        else:
            labels = check_labels(name, labels, embeddings.shape[0])
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            loss = self.triplet_loss(embeddings.float(), labels)
        if self.class_loss is not None:
            loss = loss + self.class_loss(outputs, labels)
        return loss

    def triplet_loss(self, embeddings, labels):
        if self.normalize_feature:
            embeddings = F.normalize(embeddings, dim=1)
        similarity = embeddings @ embeddings.t()
        same_class = labels[:, None] == labels[None, :]
        has_negative = (~same_class).any(dim=1)
        hardest_positive = similarity.masked_fill(~same_class, float("inf")).min(dim=1).values
        hardest_negative = similarity.masked_fill(same_class, float("-inf")).max(dim=1).values
        loss = masked_mean(F.relu(hardest_negative - hardest_positive + self.margin), has_negative)
        if self.add_absolute:
            absolute = (F.relu(self.ap_value - hardest_positive).mean()
                        + masked_mean(F.relu(hardest_negative - self.an_value), has_negative))
            loss = loss + self.absolute_loss_weight * absolute
        return loss
