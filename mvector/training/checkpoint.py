"""What a training checkpoint holds besides the weights, so a run resumes at the step it stopped: every
random stream's state, the position in the epoch, and a safe loader for ``training.pth``."""
import importlib
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mvector.errors import ModelMismatchError
from mvector.model_dir import torch_load_failure


def rng_state(device: torch.device) -> dict:
    """Every random stream's state in types ``torch.load(weights_only=True)`` reads: tensors, numbers,
    strings, tuples and dicts (numpy's key array becomes a tensor)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"bit_generator": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["bit_generator"], numpy_state["keys"].numpy().astype(np.uint32),
                       numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)  # a tuple with a numpy array in checkpoints written before
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# What a training.pth written before its RNG states became tensors needs besides weights_only's
# types: numpy's array reconstruction, which runs no code of the file's choosing.
_OLDER_TRAINING_STATE_GLOBALS = {"numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                                 "numpy.core.multiarray._reconstruct", "numpy.dtypes.UInt32DType"}


def load_training_state(path: Path) -> dict:
    """A ``training.pth``, loaded with ``weights_only=True``: a file that would run code is refused."""
    restart = ("start again with --pretrained from its model directory (the weights are kept; the "
               "optimizer and schedules start over)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # older format, truncated, foreign or poisoned: decide which below
        try:
            needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:
            needed = None
        if not needed or not needed <= _OLDER_TRAINING_STATE_GLOBALS:
            detail = (f"it needs {', '.join(sorted(needed))}, which loading would run" if needed
                      else torch_load_failure(first))
            raise ModelMismatchError(f"{path}: cannot be read safely as a training state ({detail}); "
                                     f"{restart}") from None
    allowed = []  # all of them: the dtype classes are found only while loading
    for name in _OLDER_TRAINING_STATE_GLOBALS:
        module, _, attribute = name.rpartition(".")
        try:
            allowed.append((getattr(importlib.import_module(module), attribute), name))
        except (ImportError, AttributeError):  # the other numpy major version's path
            continue
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def loader_from_batch(loader: DataLoader, skip_batches: int) -> DataLoader:
    """The same epoch's batches as ``loader`` without its first ``skip_batches``, none of them loaded.

    Valid because sampler order and per-sample crops/augmentation are functions of (seed, epoch,
    index), so a batch holds the same samples whichever process loads it.
    """
    if skip_batches == 0:
        return loader
    batches = list(loader.batch_sampler)[skip_batches:]
    return DataLoader(loader.dataset, batch_sampler=batches, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                      generator=loader.generator, timeout=loader.timeout)
