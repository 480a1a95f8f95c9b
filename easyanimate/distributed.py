"""Rank and world size, from one place: torch.distributed (or the launcher's env before it is initialised).

accelerate 1.15 under DeepSpeed on CPU reports process_index 0 and num_processes 1 on every rank while
torch.distributed knows better; nothing in this package asks accelerate who it is.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """The one process that writes shared files (manifests, logs, exported models)."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


_OPS = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}


def reduce_number(value: float, op: str, device: torch.device | str = "cpu") -> float:
    """``value`` reduced over all ranks with ``op`` (min, max, sum or mean); one collective."""
    if not is_initialized():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=_OPS["sum" if op == "mean" else op])
    return float(tensor.item()) / (world_size() if op == "mean" else 1)


def computed_on_main(compute: Callable[[], T]) -> T:
    """``compute()`` run by rank 0 alone, its (picklable) result handed to every rank in one broadcast; an
    exception on rank 0 is raised on every rank (the others would otherwise wait in the broadcast)."""
    if not is_initialized():
        return compute()
    box: list = [None]
    if rank() == 0:
        try:
            box[0] = ("value", compute())
        except Exception as error:  # handed to every rank, re-raised below
            box[0] = ("error", error)
    dist.broadcast_object_list(box, src=0)
    kind, payload = box[0]
    if kind == "error":
        raise payload
    return payload


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank iff ``flag`` is true on every rank (one collective)."""
    return reduce_number(1.0 if flag else 0.0, "min", device) == 1.0


def any_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank iff ``flag`` is true on some rank (one collective)."""
    return reduce_number(1.0 if flag else 0.0, "max", device) == 1.0
