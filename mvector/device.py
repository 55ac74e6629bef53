"""The one choice of torch device and of data-loading processes, for training, inference and the scripts."""
import os

import torch

from mvector.errors import ConfigError

# What ``use_gpu`` may be: the scripts' --use_gpu words and the Python API's booleans.
_CHOICES = {"auto": "auto", "true": True, "false": False}


def choose_device(use_gpu=False, local_rank: int = 0) -> torch.device:
    """``use_gpu``: False / 'false' (the CPU), True / 'true' (CUDA, an error without it) or 'auto'
    (CUDA when present). Under torchrun each process takes the GPU of its ``local_rank``."""
    choice = use_gpu if isinstance(use_gpu, bool) else _CHOICES.get(str(use_gpu).lower())
    if choice is None:
        raise ConfigError(f"use_gpu must be auto, true or false, got {use_gpu!r}")
    if choice is True and not torch.cuda.is_available():
        raise ConfigError("use_gpu=True but no CUDA GPU is available (torch.cuda.is_available() is False); "
                          "run on the CPU with use_gpu=False (--use_gpu false), or auto to use a GPU when present")
    if choice is False or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def wants_gpu(use_gpu) -> bool:
    """``use_gpu`` in any of ``choose_device``'s words, as the yes or no the inference backends take."""
    return choose_device(use_gpu).type == "cuda"


# More decoding processes than this rarely help a CPU front-end; fewer cores than processes only
# makes PyTorch warn and the processes fight.
MAX_LOADER_WORKERS = 4


def loader_workers(configured=None) -> int:
    """``dataset_conf.num_workers``, or when it is None as many as the machine has cores, up to 4."""
    if configured is not None:
        return int(configured)
    return min(MAX_LOADER_WORKERS, os.cpu_count() or 1)
