"""Inference: reads model directories (predictor, backends, export, quantization, thresholds). Never imports
``mvector.training``."""
