"""mvector: speaker verification (voiceprint recognition) for PyTorch."""

__version__ = "0.1.0"
