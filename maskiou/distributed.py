"""torchrun support: process group from the environment, rank helpers, gathering."""

from __future__ import annotations

import datetime
import gc
import os
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        (rank, world_size, device of this process). NCCL on GPU, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        # the other ranks wait at a barrier while rank 0 trains the add-on head: hours at COCO
        # scale on a CPU, past the default 30 (gloo) or 10 (NCCL) minutes
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=6))
    return rank, world, dev


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (just ``[obj]`` without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Destroy the process group. Call it after dropping every object that holds the group
    (a ``DistributedDataParallel`` model): the collection here then frees gloo's worker threads
    while the interpreter is alive. A group freed only at interpreter exit can abort the
    process ("terminate called without an active exception", SIGABRT) after a finished run."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
