"""mvector: speaker verification (voiceprint recognition) for PyTorch.

The package is a small core (audio, features, models, losses, configs, model directories, metrics)
with four wings: ``training`` writes model directories, ``inference`` reads them, ``library`` stores
voiceprints and ``apps`` talks to people (scripts, microphone, HTTP server). Training and inference
never import each other.
"""

__version__ = "0.1.0"

# The package's face, resolved on first use so that ``import mvector`` does not load torch.
_LAZY = {
    "MVectorPredictor": "mvector.inference.predictor",
    "VoiceprintDB": "mvector.library.store",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mvector' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
