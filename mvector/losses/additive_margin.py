"""Additive cosine margins: AM-Softmax (CosFace) and Real AM-Softmax (ARM)."""
import torch
import torch.nn.functional as F

from mvector.losses.base import MarginLoss, check_number


class AMLoss(MarginLoss):
    """CosFace / AM-Softmax: cross-entropy over s * (cos_y - m) for the target, s * cos_j elsewhere.

    Wang et al., "Additive Margin Softmax for Face Verification" (2018).
    """

    def __init__(self, margin=0.2, scale=30, label_smoothing=0.0):
        super().__init__(margin)
        name = type(self).__name__
        self.scale = check_number(name, "scale", scale, low=0.0, open_low=True)
        self.label_smoothing = check_number(name, "label_smoothing", label_smoothing,
                                            low=0.0, high=1.0, open_high=True)

    def margin_logits(self, cos, labels):
        target = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.scale * (cos - self.margin * target)

    def compute(self, cos, labels):
        return F.cross_entropy(self.margin_logits(cos, labels), labels, label_smoothing=self.label_smoothing)


class ARMLoss(MarginLoss):
    """Real AM-Softmax: only non-targets that violate the margin take part as competitors.

    Li, Nai & Wang, "Real Additive Margin Softmax for Speaker Verification" (ICASSP 2022), as in
    the authors' released code and the reference mvector toolkit: the target logit is
    s * (cos_y - m); a non-target keeps its logit s * cos_j only when cos_j >= cos_y - m, and is
    set to 0 otherwise, so classes already beyond the margin stop pushing the embedding.
    """

    def __init__(self, margin=0.2, scale=30):
        super().__init__(margin)
        self.scale = check_number(type(self).__name__, "scale", scale, low=0.0, open_low=True)

    def margin_logits(self, cos, labels):
        target = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        logits = self.scale * (cos - self.margin * target)
        target_logit = logits.gather(1, labels[:, None])
        # The target itself sits exactly at target_logit, so it is always kept.
        return torch.where(logits < target_logit, torch.zeros_like(logits), logits)

    def compute(self, cos, labels):
        return F.cross_entropy(self.margin_logits(cos, labels), labels)
