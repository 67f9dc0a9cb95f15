"""Data-parallel plumbing over torch.distributed (launched by torchrun), in one place.

`sparsesteer train` and `sparsesteer cache` run unchanged in one process; started by torchrun
(`torchrun --nproc-per-node N -m sparsesteer train ...`) they find RANK / WORLD_SIZE /
LOCAL_RANK in the environment, join the process group (nccl on CUDA, gloo on CPU) and split the
work. Everything else asks this module: `world()` for (rank, size), `all_reduce_sum` for gradients
and counters, `barrier`, and `is_writer()` before touching the output directory (rank 0 writes
checkpoints, logs and manifests; the other ranks only compute).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from .errors import SparsesteerError

if TYPE_CHECKING:
    import torch


class World(NamedTuple):
    rank: int
    size: int
    local_rank: int


def launched() -> bool:
    """True when started by torchrun (or torch.distributed.run) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device | None = None) -> World:
    """Join the process group torchrun describes (idempotent); one process = a world of size 1.

    The backend is nccl when `device` is CUDA and gloo otherwise (CPU tests and CPU clusters)."""
    import torch.distributed as dist

    if not launched():
        return World(0, 1, 0)
    if not dist.is_available():
        raise SparsesteerError("torchrun started several processes but this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def world() -> World:
    """(rank, size, local_rank) of this process; (0, 1, 0) outside torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World(0, 1, 0)


def is_writer() -> bool:
    """Only rank 0 writes files (checkpoints, logs, manifests, results)."""
    return world().rank == 0


def rank_device(device: torch.device) -> torch.device:
    """A CUDA device becomes this rank's GPU (cuda:LOCAL_RANK); CPU stays CPU."""
    import torch

    if device.type == "cuda" and launched():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (one flat buffer per dtype: one collective each)."""
    import torch
    import torch.distributed as dist

    if world().size == 1 or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def barrier() -> None:
    import torch.distributed as dist

    if world().size > 1:
        dist.barrier()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
