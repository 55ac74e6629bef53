"""``from mvector.predict import MVectorPredictor``, the import path older READMEs show; the predictor
lives in ``mvector.inference.predictor`` and is also ``mvector.MVectorPredictor``."""
from mvector.inference.predictor import MVectorPredictor

__all__ = ["MVectorPredictor"]
