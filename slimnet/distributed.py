"""Several processes under ``torchrun --nproc-per-node N``: who am I, and bring the pieces to rank 0.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`start` joins the process
group from them (gloo on the CPU, NCCL when every rank has its own GPU) and is a no-op for a single process, so
the same code runs with and without torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (0 of 1 without torchrun) and its device."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0 merges, prints and writes."""
        return self.rank == 0


def start(device: str | None = None) -> World:
    """Join torchrun's process group when there is one (idempotent); ``device``: "cpu", "cuda" or None (CUDA
    when available, one GPU per local rank)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if size <= 1:
        return World(0, 1, dev)
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), dev)


def gather(world: World, value: Any) -> list[Any] | None:
    """Every rank's ``value`` on rank 0, in rank order (None on the other ranks)."""
    if world.size == 1:
        return [value]
    out: list[Any] | None = [None] * world.size if world.main else None
    dist.gather_object(value, out, dst=0)
    return out


def stop(world: World) -> None:
    """Leave the process group (after a last barrier, so no rank exits while another still gathers)."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
