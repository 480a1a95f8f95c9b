"""What a job asks SLURM for, by default: whole nodes for multi-node training, every core and all memory of them,
typed GPU requests; for single-node jobs a GPU's share of the node's cores and memory. Standard library only.

The node's shape (cores, memory, GPUs) comes from ``sinfo`` for the job's partition when SLURM answers at submit
time; a dry run without SLURM leaves the numbers to the job itself (``--exclusive`` gives it the whole node, and
srun gets ``$SLURM_CPUS_ON_NODE``). One SLURM task per node starts every training process of that node, so the task
gets all the node's cores the job holds and each process ``cpus_per_task / processes_per_node`` of them.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class NodeShape:
    """The smallest node of a partition (a job must fit on every node it may get)."""
    cpus: int
    memory_mb: int
    gpus: int = 0
    gpu_type: Optional[str] = None


def parse_gres(gres: str) -> tuple[int, Optional[str]]:
    """GPU count and type of a node's GRES (``gpu:h100:8(S:0-1)``, ``gpu:8``); (0, None) without GPUs."""
    for item in gres.split(","):
        match = re.match(r"^gpu(?::([^:(]+))?:(\d+)", item.strip())
        if match:
            return int(match.group(2)), match.group(1)
    return 0, None


def parse_sinfo(text: str) -> Optional[NodeShape]:
    """``sinfo -h -N -o "%c %m %G"`` lines -> the smallest node, or None."""
    shapes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].rstrip("+").isdigit():
            gpus, gpu_type = parse_gres(parts[2] if len(parts) > 2 else "")
            shapes.append(NodeShape(int(parts[0]), int(parts[1].rstrip("+")), gpus, gpu_type))
    if not shapes:
        return None
    return NodeShape(min(s.cpus for s in shapes), min(s.memory_mb for s in shapes), min(s.gpus for s in shapes),
                     shapes[0].gpu_type if len({s.gpu_type for s in shapes}) == 1 else None)


def partition_shape(partition: Optional[str], timeout: float = 15) -> Optional[NodeShape]:
    """The partition's smallest node from sinfo (the default partition when None); None when SLURM is absent."""
    argv = ["sinfo", "-h", "-N", "-o", "%c %m %G"] + (["-p", partition] if partition else [])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_sinfo(done.stdout) if done.returncode == 0 else None


@dataclass(frozen=True)
class Request:
    exclusive: bool
    cpus_per_task: Optional[int]
    mem: Optional[str]
    mem_per_gpu: Optional[str]
    notes: tuple[str, ...] = ()


def request(*, nodes: int, gpus_per_node: int, exclusive: Optional[bool], cpus_per_task: Optional[int],
            mem: Optional[str], mem_per_gpu: Optional[str], shape: Optional[NodeShape]) -> Request:
    """Fill what the user left unset. Multi-node training takes whole nodes (a shared node's traffic slows every
    collective of the job); a single-node job takes its GPUs' share of cores and memory."""
    whole = nodes > 1 if exclusive is None else exclusive
    notes = []
    if cpus_per_task is None and shape is not None:
        if whole or not (gpus_per_node and shape.gpus):
            cpus_per_task = shape.cpus
        else:
            cpus_per_task = max(1, shape.cpus * min(gpus_per_node, shape.gpus) // shape.gpus)
    if cpus_per_task is None:
        notes.append("cpus-per-task: the node's cores are unknown here (no sinfo); the job's task gets "
                     + ("every core of its node ($SLURM_CPUS_ON_NODE)" if whole else
                        "SLURM's default (often 1 core): pass --cpus-per-task"))
    if mem is None and mem_per_gpu is None:
        if whole:
            mem = "0"  # sbatch: all of each node's memory
        elif gpus_per_node and shape is not None and shape.gpus:
            mem_per_gpu = f"{shape.memory_mb // shape.gpus}M"
        elif shape is not None:
            mem = f"{shape.memory_mb}M" if not gpus_per_node else None
    return Request(whole, cpus_per_task, mem, mem_per_gpu, tuple(notes))


def gres(gpus_per_node: int, gpu_type: Optional[str]) -> Optional[str]:
    """``gpu:h100:8`` (typed) or ``gpu:8``; None for CPU jobs."""
    if not gpus_per_node:
        return None
    return f"gpu:{gpu_type}:{gpus_per_node}" if gpu_type else f"gpu:{gpus_per_node}"
