"""Rank, world size and collectives, from one place: torch.distributed (or the launcher's env before it starts).

This module alone chooses the device a collective's tensors live on: the one the process group's backend serves
(NCCL serves CUDA tensors only, gloo CPU ones). Callers pass values, never devices. accelerate 1.15 under
DeepSpeed on CPU reports process_index 0 and num_processes 1 on every rank while torch.distributed knows better;
nothing in this package asks accelerate who it is.
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


# ---- the device collectives use ----

def served_device_types(backend_config: str) -> list[str]:
    """Device types a backend config serves, in its order: "cuda:nccl" -> ["cuda"]; "cpu:gloo,cuda:nccl" ->
    ["cpu", "cuda"]; a bare name ("nccl") is looked up in torch's table of backend capabilities."""
    pairs = [part.strip() for part in backend_config.split(",") if part.strip()]
    if all(":" in pair for pair in pairs):
        return [pair.split(":", 1)[0] for pair in pairs]
    return list(dist.Backend.backend_capability.get(backend_config.lower(), ["cpu"]))


def device_type_for(backend_config: str) -> str:
    """The device type collectives use under ``backend_config``: the CPU when the backend serves it (a scalar or
    a pickled object starts in CPU memory: no copy), else the one device type it serves (NCCL: "cuda"). Same
    rule as torch's own object collectives."""
    served = served_device_types(backend_config)
    return "cpu" if "cpu" in served else served[0]


def collective_device() -> torch.device:
    """The device this process's collectives put their tensors on (CPU when not distributed)."""
    kind = device_type_for(dist.get_backend_config()) if is_initialized() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind, None)
    if module is not None and module.is_available():
        return torch.device(kind, module.current_device())
    # The launchers bind each process to device LOCAL_RANK (accelerate calls set_device with it).
    return torch.device(kind, local_rank())


# ---- collectives ----

def barrier() -> None:
    if not is_initialized():
        return
    device = collective_device()
    # Naming the device spares NCCL a guess (and its warning) about which GPU this process uses.
    dist.barrier(device_ids=None if device.type == "cpu" else [device.index])


_OPS = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}


def reduce_number(value: float, op: str) -> float:
    """``value`` reduced over all ranks with ``op`` (min, max, sum or mean); one collective."""
    if not is_initialized():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor, op=_OPS["sum" if op == "mean" else op])
    return float(tensor.item()) / (world_size() if op == "mean" else 1)


def computed_on_main(compute: Callable[[], T]) -> T:
    """``compute()`` run by rank 0 alone, its (picklable) result handed to every rank in one broadcast; an
    exception on rank 0 is raised on every rank (the others would otherwise wait in the broadcast)."""
    if not is_initialized():
        return compute()
    result = None
    if rank() == 0:
        try:
            result = ("value", compute())
        except Exception as error:  # handed to every rank, re-raised below
            result = ("error", error)
    kind, payload = from_rank0(result)
    if kind == "error":
        raise payload
    return payload


def all_true(flag: bool) -> bool:
    """True on every rank iff ``flag`` is true on every rank (one collective)."""
    return reduce_number(1.0 if flag else 0.0, "min") == 1.0


def any_true(flag: bool) -> bool:
    """True on every rank iff ``flag`` is true on some rank (one collective)."""
    return reduce_number(1.0 if flag else 0.0, "max") == 1.0


def gather_lists(items: list) -> list:
    """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
    if not is_initialized():
        return list(items)
    everyone = [None] * world_size()
    dist.all_gather_object(everyone, items)
    return [item for rank_items in everyone for item in rank_items]


def from_rank0(value):
    """Rank 0's ``value`` (picklable) on every rank."""
    if not is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=collective_device())
    return box[0]
