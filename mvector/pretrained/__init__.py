"""Pretrained model directories shipped inside the package (``mvector/pretrained/<name>/``).

A shipped model is an ordinary model directory (``model.pth``, ``config.yml``, ``model.state``,
see ``mvector.model_dir``); ``setup.py`` packages everything under ``pretrained/*/``.
"""
from pathlib import Path

from mvector.errors import MVectorError
from mvector.model_dir import MODEL_FILE
from mvector.registry import Registry

# Checkpoint formats of other toolkits that import_model.py turns into model directories:
# name -> importer(checkpoint, out_dir, model=None, overwrite=False) -> Path.
IMPORT_SOURCES = Registry("checkpoint source")


def _import_3dspeaker(checkpoint, out_dir, model=None, overwrite=False):
    from mvector.pretrained.threedspeaker import import_3dspeaker
    return import_3dspeaker(checkpoint, out_dir, model=model, overwrite=overwrite)


IMPORT_SOURCES["3dspeaker"] = _import_3dspeaker

# The packaged model MVectorPredictor uses when given neither model_dir nor model.
DEFAULT_MODEL_NAME = "CAMPPlus_3DSpeaker"
# The small fast model: a 2 M-parameter ECAPA-TDNN distilled from the default.
SMALL_MODEL_NAME = "EcapaTdnn_Small"
# Names a user may give instead of a folder name (MVectorPredictor(model=...), --model).
MODEL_ALIASES = {"default": lambda: DEFAULT_MODEL_NAME, "small": lambda: SMALL_MODEL_NAME}


def pretrained_models() -> dict:
    """``name -> folder`` of every model shipped in this installation, aliases included."""
    here = Path(__file__).resolve().parent
    folders = {p.name: p for p in sorted(here.iterdir()) if (p / MODEL_FILE).is_file()}
    aliases = {alias: folders[target()] for alias, target in MODEL_ALIASES.items() if target() in folders}
    return {**aliases, **folders}


def pretrained_model_dir(name: str = None) -> Path:
    """The folder of the packaged model ``name`` (None: the default); MVectorError naming the shipped
    ones when there is no such model."""
    models = pretrained_models()
    name = "default" if name is None else name
    if name == "default" and name not in models:
        raise MVectorError(f"no pretrained default model is shipped ({DEFAULT_MODEL_NAME} is missing from this "
                           f"installation); pass model_dir (a directory written by train.py or import_model.py)")
    if name not in models:
        raise MVectorError(f"no packaged model named {name!r}; packaged: {', '.join(models)} (or pass model_dir)")
    return models[name]


def default_model_dir() -> Path:
    """The packaged default model directory; MVectorError while none is shipped."""
    return pretrained_model_dir(None)
