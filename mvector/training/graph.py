"""The one place the training model is assembled: waveform augmentation, features, SpecAugment,
backbone, classifier head and loss as one module (the trainer, curation and bench/train_gpu.py build it
here), what goes in and out of its checkpoints' weights, and torch.compile's failures explained."""
from contextlib import contextmanager

import torch
from torch import nn

from mvector.embedder import SpeakerEmbedder, build_featurizer
from mvector.errors import ConfigError, ModelMismatchError, MVectorError
from mvector.losses import build_loss
from mvector.model_dir import split_weights
from mvector.models import build_backbone
from mvector.models.classifier import build_classifier
from mvector.training.distillation import distillation_loss


class TrainGraph(nn.Module):
    """Waveform augmentation -> features -> SpecAugment -> backbone -> head -> loss as one module.

    The loss is inside so that DDP also synchronises the gradients of a loss's own parameters.
    """

    def __init__(self, wave_augment, featurizer, spec_augment, backbone, classifier, loss, distill_weight=0.0):
        super().__init__()
        self.distill_weight = float(distill_weight)
        self.wave_augment = wave_augment
        self.featurizer = featurizer
        self.spec_augment = spec_augment
        self.backbone = backbone
        self.classifier = classifier
        self.loss = loss

    @property
    def parts(self) -> dict:
        """The parts saved in model.pth; a featurizer part only for front-ends with tensors of their own,
        a loss part only for losses with them (SphereFace2's bias)."""
        parts = {"backbone": self.backbone, "classifier": self.classifier}
        if self.featurizer.state_dict():  # a learnt front-end (an SSL model's layer weights)
            parts["featurizer"] = self.featurizer
        if self.loss.state_dict():
            parts["loss"] = self.loss
        return parts

    def embedder(self) -> SpeakerEmbedder:
        """The inference graph inside this one (features and backbone, sharing their weights)."""
        return SpeakerEmbedder(self.featurizer, self.backbone)

    def forward(self, waveforms, lengths, labels, teacher=None):
        """``teacher``: the teacher's embeddings ``[B, E]`` of the crops' utterances (distillation)."""
        if self.wave_augment is not None and self.training:
            waveforms = self.wave_augment(waveforms, lengths)
        features, frame_lengths = self.featurizer(waveforms, lengths)
        if self.spec_augment is not None and self.training:
            features = self.spec_augment(features, frame_lengths)
        embeddings = self.backbone(features, frame_lengths)
        outputs = self.classifier(embeddings)
        loss = self.loss(outputs, labels, embeddings) if self.loss.needs_embeddings else self.loss(outputs, labels)
        if teacher is not None:
            loss = loss + self.distill_weight * distillation_loss(embeddings, teacher)
        return loss, outputs


def build_train_graph(config: dict, num_classes: int, augmentation=None, distill_weight: float = 0.0) -> TrainGraph:
    """The training model ``config`` describes, for ``num_classes`` speakers. ``augmentation``: an
    ``mvector.training.augment.Augmentation`` (its device parts go in the graph) or None."""
    featurizer = build_featurizer(config)
    model_conf, loss_conf = config["model_conf"], config["loss_conf"]
    backbone = build_backbone(model_conf["model"], featurizer.feature_dim, **model_conf["model_args"])
    classifier = build_classifier(model_conf["classifier"], backbone.embd_dim, num_classes,
                                  **model_conf["classifier_args"])
    loss = build_loss(loss_conf["loss"], **loss_conf["loss_args"])
    check_pairing(loss, classifier, config)
    wave, spec = (augmentation.wave, augmentation.spec) if augmentation is not None else (None, None)
    return TrainGraph(wave, featurizer, spec, backbone, classifier, loss, distill_weight)


def check_pairing(loss, classifier, config) -> None:
    """A margin loss on logits, or cross-entropy on cosines, trains but learns nothing useful."""
    if loss.input_type != classifier.output_type:
        raise ConfigError(f"loss_conf.loss '{config['loss_conf']['loss']}' expects {loss.input_type} inputs but "
                          f"model_conf.classifier '{config['model_conf']['classifier']}' outputs "
                          f"{classifier.output_type}; pick a matching pair (Cosine with margin losses, "
                          f"Linear with CELoss)")


def model_weights(parts: dict) -> dict:
    """The flat ``part.name -> cpu tensor`` dict saved as model.pth."""
    weights = {}
    for prefix, module in parts.items():
        weights.update({f"{prefix}.{k}": v.detach().cpu() for k, v in module.state_dict().items()})
    return weights


def load_pretrained(parts: dict, weights: dict, allow_partial: bool = False, where: str = "pretrained"):
    """Load every tensor of ``weights`` that fits; return one report line per tensor left out.

    The classifier and loss may differ (another speaker count): their misfits are only reported.
    A backbone misfit is a ModelMismatchError unless ``allow_partial``.
    """
    report, backbone_problems, loaded = [], 0, 0
    for prefix, module in parts.items():
        own, given = module.state_dict(), split_weights(weights, prefix)
        fitting = {}
        for key, tensor in own.items():
            if key not in given:
                report.append(f"{prefix}.{key}: not in {where}, keeps its initial value")
            elif given[key].shape != tensor.shape:
                report.append(f"{prefix}.{key}: shape {tuple(given[key].shape)} in {where} vs "
                              f"{tuple(tensor.shape)} here, skipped")
            else:
                fitting[key] = given[key].to(tensor.dtype)
        report += [f"{prefix}.{key}: not in this model, skipped" for key in given if key not in own]
        if prefix == "backbone":
            backbone_problems = len(report)
        module.load_state_dict(fitting, strict=False)
        loaded += len(fitting)
    known = tuple(f"{p}." for p in parts)
    report += [f"{key}: belongs to no part of this model, skipped" for key in weights if not key.startswith(known)]
    if backbone_problems and not allow_partial:
        raise ModelMismatchError(f"{where}: {backbone_problems} backbone tensor(s) do not fit this model "
                                 f"(e.g. {report[0]}); pass --allow_partial to load the rest anyway")
    return loaded, report


@contextmanager
def compile_errors_explained(compiling: bool):
    """torch.compile fails deep inside the compiler (no C++ compiler for the CPU, an operator this
    torch cannot compile): one line that says how to train without it, not a traceback from there."""
    try:
        yield
    except Exception as exc:
        if compiling and isinstance(exc, torch._dynamo.exc.TorchDynamoException):
            detail = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise MVectorError(f"torch.compile failed on this machine ({detail.strip()}); train without it: "
                               f"--override train_conf.use_compile=false") from exc
        raise
