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

# The model MVectorPredictor uses when no model_dir is given.
DEFAULT_MODEL_NAME = "EcapaTdnn_Fbank"


def default_model_dir() -> Path:
    """The packaged default model directory; MVectorError while none is shipped."""
    path = Path(__file__).resolve().parent / DEFAULT_MODEL_NAME
    if not (path / MODEL_FILE).is_file():
        raise MVectorError("no pretrained model is shipped yet; pass model_dir "
                           f"(a directory written by training, e.g. --model_dir models/{DEFAULT_MODEL_NAME})")
    return path
