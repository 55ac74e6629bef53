"""Plain softmax cross-entropy on the logits of a linear head."""
import torch.nn.functional as F

from mvector.losses.base import Loss, check_number


class CELoss(Loss):
    """Cross-entropy on logits (pair with the 'Linear' head); no margin, so no scheduler."""

    input_type = "logits"

    def __init__(self, label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = check_number(type(self).__name__, "label_smoothing", label_smoothing,
                                            low=0.0, high=1.0, open_high=True)

    def compute(self, logits, labels):
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
