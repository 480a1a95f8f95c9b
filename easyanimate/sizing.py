"""How big a job is before it runs: checkpoint bytes per node and the signal lead time they need. Standard library.

One table of bytes per parameter serves every consumer: ``submit.py``'s lead-time default and warnings, the
preflight ``check``'s storage verdict and the memory plan. A ZeRO-2 checkpoint (accelerate + DeepSpeed) holds the
module in its training dtype, written by rank 0, plus every rank's partition of the fp32 master weights and the
two Adam moments; a plain DDP checkpoint holds fp32 weights and fp32 moments, all written by rank 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GB = 1e9
# Before this job folder has measured a save: a parallel filesystem's per-node write+fsync speed under load is
# rarely below this, and the safety factor below covers a slower day.
CONSERVATIVE_WRITE_GBPS = 1.0
CONSERVATIVE_STEP_S = 60.0   # one optimizer step of the 12B model at the seed's sizes, with room to spare
SAVE_SAFETY = 2.0            # a shared filesystem under other jobs' load writes at half of what it measured alone
MARGIN_S = 30.0              # slurmctld checks limits every 30 s: the signal may come that much late

FP32, BF16 = 4, 2
ADAM_MOMENTS = 2 * FP32


@dataclass(frozen=True)
class Layout:
    """Where a job's ranks are and how its state is sharded."""
    nodes: int
    gpus_per_node: int
    deepspeed: bool = True          # ZeRO stage 2
    module_bytes: int = BF16        # bytes/parameter of the saved module (ZeRO-2: the training dtype)
    ema_bytes: int = 0              # bytes/parameter of an EMA copy saved by rank 0 (0: no EMA)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


def checkpoint_bytes_per_node(params: int, layout: Layout) -> list[float]:
    """Bytes each node writes for one checkpoint; node 0 first (it holds rank 0's whole-model files)."""
    if layout.deepspeed:
        shards = (FP32 + ADAM_MOMENTS) * params / layout.world_size * layout.gpus_per_node
        rank0 = layout.module_bytes * params
    else:
        shards = 0.0
        rank0 = (FP32 + ADAM_MOMENTS) * params
    rank0 += layout.ema_bytes * params
    return [shards + (rank0 if node == 0 else 0.0) for node in range(layout.nodes)]


def checkpoint_bytes(params: int, layout: Layout) -> float:
    return sum(checkpoint_bytes_per_node(params, layout))


def save_seconds(params: int, layout: Layout, write_gbps: float = CONSERVATIVE_WRITE_GBPS) -> float:
    """Write time of the busiest node at ``write_gbps`` GB/s (nodes write in parallel)."""
    return max(checkpoint_bytes_per_node(params, layout)) / (write_gbps * GB)


def lead_time_s(params: int, layout: Layout, *, step_s: float | None = None, write_gbps: float | None = None,
                measured_save_s: float | None = None) -> int:
    """Seconds before the time limit (or during a preemption's grace) the warning signal must come: the step in
    flight, then the save with ``SAVE_SAFETY`` head-room, then ``MARGIN_S``. A save measured by an earlier attempt
    of the job replaces the estimate from bandwidth."""
    save = measured_save_s if measured_save_s is not None else \
        save_seconds(params, layout, write_gbps or CONSERVATIVE_WRITE_GBPS)
    step = CONSERVATIVE_STEP_S if step_s is None else step_s
    return math.ceil(step + SAVE_SAFETY * save + MARGIN_S)
