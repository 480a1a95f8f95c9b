"""How big a job is before it runs: checkpoint bytes per node, the signal lead time they need, and what each GPU
holds for the trained transformer (``state_terms``, used by the memory plan in ``memory.py``) against a table of
GPU memory sizes. Standard library.

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
    ema_bytes: int = 0              # bytes/parameter of the EMA (fp32: 4), saved sharded by every rank (0: no EMA)

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
    shards += layout.ema_bytes * params / layout.world_size * layout.gpus_per_node
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


# --- GPU memory per rank -----------------------------------------------------------------------------------------

GIB = 2 ** 30
# Memory of one GPU as nvidia-smi reports it (MiB), by the names a SLURM request uses (gres type, constraint or
# partition). The allocator can use a little less (CUDA context below). A size-less "a100" is taken as the 40 GB one.
GPU_MEMORY_MIB = {
    "a100-40gb": 40_960, "a100-80gb": 81_920, "a100": 40_960, "a10": 23_028, "a40": 46_068, "l40s": 46_068,
    "l40": 46_068, "l4": 23_034, "v100-16gb": 16_384, "v100-32gb": 32_768, "v100": 32_768,
    "h100-80gb": 81_559, "h100": 81_559, "h100-nvl": 95_830, "h100-94gb": 95_830, "gh200": 97_871,
    "h200": 143_771, "b200": 183_359, "gb200": 189_471, "mi250": 65_536, "mi300x": 196_592,
}
_GPU_ALIASES = {"a100_40gb": "a100-40gb", "a100_80gb": "a100-80gb", "a100-40g": "a100-40gb",
                "a100-80g": "a100-80gb", "a100_40g": "a100-40gb", "a100_80g": "a100-80gb", "h100_80gb": "h100",
                "h100-sxm": "h100", "h100-pcie": "h100", "h100_nvl": "h100-nvl", "v100_32gb": "v100-32gb",
                "v100_16gb": "v100-16gb", "v100-sxm2-32gb": "v100-32gb"}
CUDA_CONTEXT_BYTES = 1.5 * GIB   # CUDA context, cuBLAS and NCCL workspaces of one process (typical)
FIT_FRACTION = 0.92              # above this share of the GPU, allocator fragmentation makes an OOM likely


def gpu_memory_bytes(name: str) -> int | None:
    """Bytes of one GPU called ``name`` (h100, H100-80GB, a100_40gb, b200, ...), None when unknown."""
    key = name.strip().lower().replace(" ", "-")
    key = _GPU_ALIASES.get(key, key)
    mib = GPU_MEMORY_MIB.get(key)
    return None if mib is None else mib * 2 ** 20


def find_gpu(*texts: str | None) -> str | None:
    """The first known GPU named in SLURM request strings (gres ``gpu:h100:8``, ``--constraint h200&ib``,
    a partition ``gpu-a100-80gb``); the longest match wins (a100-80gb over a100)."""
    import re
    names = sorted({*GPU_MEMORY_MIB, *_GPU_ALIASES}, key=len, reverse=True)
    for text in texts:
        for token in re.split(r"[\s:,&|()\[\]=]+", (text or "").lower()):
            for name in names:
                if re.search(rf"(^|[^a-z0-9]){re.escape(name)}($|[^a-z0-9])", token):
                    return _GPU_ALIASES.get(name, name)
    return None


@dataclass(frozen=True)
class TrainingState:
    """What one rank holds for the trained transformer, besides activations."""
    params: int                      # transformer parameters (all are on every rank)
    trainable: int                   # of which trained (gradients, optimizer state, EMA)
    layout: Layout
    master_dtype_bytes: int = FP32   # without DeepSpeed: the trained weights' and Adam moments' dtype
    mixed_precision: str = "bf16"    # accelerate's: bf16, fp16 or no
    eight_bit_adam: bool = False
    ema: str = "none"                # none | sharded (fp32, 1/world per rank) | full (fp32 copy per rank)
    reduce_bucket_elements: int = int(5e8)   # ZeRO-2 reduce_bucket_size
    overlap_comm: bool = True


def state_terms(state: TrainingState) -> list[tuple[str, float, str]]:
    """(name, bytes per rank, how) of every resident piece of the trained transformer's state."""
    n, p, t, lay = state.layout.world_size, state.params, state.trainable, state.layout
    low = BF16 if state.mixed_precision in ("bf16", "fp16") else FP32
    moments = 2 if state.eight_bit_adam else None
    terms = []
    if lay.deepspeed:
        buckets = (2 if state.overlap_comm else 1) * state.reduce_bucket_elements * low
        terms += [
            ("weights", low * p, f"{'bf16' if low == BF16 else 'fp32'} module, whole on every rank"),
            ("fp32 master weights", FP32 * t / n, f"ZeRO-2 partition, 1/{n}"),
            ("gradients", (low + FP32) * t / n + buckets,
             f"ZeRO-2 partition 1/{n} (+ its fp32 copy at the step) + reduce buckets"),
            ("optimizer", (moments or ADAM_MOMENTS) * t / n,
             f"Adam moments ({'8-bit' if moments else 'fp32'}), ZeRO-2 partition 1/{n}"),
        ]
    else:
        w = state.master_dtype_bytes
        name = "fp32" if w == FP32 else "bf16"
        terms += [
            ("weights", w * p, f"{name} weights (--master_weights_dtype {name})"),
            ("gradients", w * t, f"{name}, whole (DDP buckets are views of them)"),
            ("optimizer", (moments or 2 * w) * t, f"Adam moments ({'8-bit' if moments else name}), whole"),
        ]
        if w == FP32 and low == BF16:
            terms.append(("autocast weight copies", BF16 * t, "bf16 casts of the trained weights, saved for "
                                                               "backward"))
    if state.ema == "sharded":
        terms.append(("EMA", FP32 * p / n, f"fp32, sharded 1/{n}"))
    elif state.ema == "full":
        terms.append(("EMA", FP32 * p, "fp32, whole copy on every rank"))
    return terms
