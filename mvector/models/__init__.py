"""Speaker-embedding backbones, built by name through ``build_backbone``.

Every backbone takes ``features[B, T, D]`` (and optional ``lengths[B]`` in frames) and returns
``[B, embd_dim]``; padded frames never change an utterance's embedding.
"""
import importlib

from mvector.registry import Registry

BACKBONES = Registry("backbone")

# Imported on first use so that e.g. ``mvector.models.pooling`` stays light to import.
_BACKBONE_MODULES = ("campplus", "ecapa_tdnn", "eres2net", "resnet_se", "res2net", "tdnn", "sequence", "rescnn")


def backbone_registry() -> Registry:
    for module in _BACKBONE_MODULES:
        importlib.import_module(f"mvector.models.{module}")
    return BACKBONES


def build_backbone(name: str, input_size: int, embd_dim: int = 192, **kwargs):
    """Build a backbone by name: CAMPPlus, EcapaTdnn, ERes2Net, ResNetSE, Res2Net, TDNN, LSTMEncoder,
    TransformerEncoder or ResCNN."""
    return backbone_registry().build(name, input_size, embd_dim=embd_dim, **kwargs)
