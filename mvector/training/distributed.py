"""Multi-process training under ``torchrun``: one process per device, rank 0 does all file I/O.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; a plain ``python train.py`` has none
of them and runs as a world of one without any process group.
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mvector.device import choose_device
from mvector.errors import ConfigError

# Rank 0 evaluates and saves while the others wait at a barrier; evaluation on a large trial
# list can take far longer than the default collective timeout.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (a collective: all ranks must call it)."""
        if not self.is_distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_distributed(use_gpu="auto"):
    """``(DistContext, device)``; joins the process group when torchrun started several processes."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = choose_device(use_gpu, local_rank)
    if world_size <= 1:
        return DistContext(), device
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL collectives and all_gather_object use the current device
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank), device


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
