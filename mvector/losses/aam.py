"""Additive angular margin (ArcFace / AAM-Softmax) and its sub-centre variant."""
import math

import torch
import torch.nn.functional as F

from mvector.losses.base import MarginLoss, check_number, safe_sine


def additive_angular_margin(cos, margin, easy_margin=False):
    """cos(theta + m) for cosines in [-1, 1].

    Past theta = pi - m, cos(theta + m) would start increasing again (rewarding a worse angle), so
    it is replaced there: by cos itself with ``easy_margin`` (margin only where cos > 0), otherwise
    by the line cos - (1 + cos(pi - m)), which meets cos(theta + m) = -1 at theta = pi - m.
    """
    shifted = cos * math.cos(margin) - safe_sine(cos) * math.sin(margin)
    if easy_margin:
        return torch.where(cos > 0, shifted, cos)
    threshold = math.cos(math.pi - margin)
    return torch.where(cos > threshold, shifted, cos - (1.0 + threshold))


class AAMLoss(MarginLoss):
    """ArcFace: cross-entropy over s * cos(theta_y + m) for the target, s * cos(theta_j) elsewhere.

    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition" (2019);
    Liu et al., "Margin Matters" (2019) for speaker verification.
    """

    def __init__(self, margin=0.2, scale=32, easy_margin=False, label_smoothing=0.0):
        super().__init__(margin)
        name = type(self).__name__
        self.scale = check_number(name, "scale", scale, low=0.0, open_low=True)
        self.easy_margin = bool(easy_margin)
        self.label_smoothing = check_number(name, "label_smoothing", label_smoothing,
                                            low=0.0, high=1.0, open_high=True)

    def margin_logits(self, cos, labels):
        """Scaled logits with the margin applied to each row's target class."""
        target = F.one_hot(labels, cos.shape[1]).bool()
        return self.scale * torch.where(target, additive_angular_margin(cos, self.margin, self.easy_margin), cos)

    def compute(self, cos, labels):
        return F.cross_entropy(self.margin_logits(cos, labels), labels, label_smoothing=self.label_smoothing)


class SubCenterLoss(AAMLoss):
    """Sub-centre ArcFace: AAM on the max cosine over each class's K sub-centres.

    Deng et al., "Sub-center ArcFace" (2020). The sub-centre max is taken by the cosine head
    (``CosineClassifier(num_centers=K)``), so the loss itself is AAM on those [B, classes]
    cosines; it exists as its own name so configs can state, and the trainer can check
    (``needs_sub_centers``), that the head must have K > 1 sub-centres.
    """

    needs_sub_centers = True
