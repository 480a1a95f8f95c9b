"""What the GPU check computes: dense bf16 peaks, transformer FLOPs from shapes, a pure forward+backward, the
loader's rate. Each function is small and usable on CPU (the dry run) as on a GPU."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s, matched on the device name.
DENSE_BF16_TFLOPS = (("H200", 989.0), ("H100 SXM", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
                     ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0),
                     ("A10G", 70.0), ("L4", 121.0))


def dense_bf16_peak_tflops(device_name: str) -> float | None:
    """The datasheet's dense bf16 peak for ``device_name`` (torch.cuda.get_device_name), None if unknown."""
    for key, tflops in DENSE_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def signature(call: dict) -> tuple:
    """A hashable key for one recorded forward's tensor shapes."""
    return tuple((name, tuple(spec["shape"])) for name, spec in sorted(call["kwargs"].items()) if "shape" in spec) \
        + tuple(tuple(spec["shape"]) for spec in call["args"] if "shape" in spec)


def most_common_call(calls: list[dict]) -> dict:
    counts = Counter(signature(call) for call in calls)
    best = counts.most_common(1)[0][0]
    return next(call for call in calls if signature(call) == best)


def loop_overheads(step_starts: list[float], phases: list[dict]) -> list[float]:
    """Per step (from one forward's start to the next's), the share of its time spent outside the loop's compute
    phases (``{"start", "end"}`` each, timed with the device synchronised): 1 - compute / step."""
    shares = []
    for start, end in zip(step_starts, step_starts[1:]):
        compute = sum(min(p["end"], end) - max(p["start"], start) for p in phases
                      if p["start"] < end and p["end"] > start)
        shares.append(1 - compute / (end - start))
    return shares


def make_inputs(call: dict, device, dtype: torch.dtype) -> tuple[list, dict]:
    """Random tensors with the recorded shapes (floats in ``dtype``; integer timesteps mid-range; masks ones)."""
    def make(spec):
        if "shape" not in spec:
            return spec.get("value")
        kind = getattr(torch, spec["dtype"])
        if kind.is_floating_point:
            return torch.randn(spec["shape"], device=device, dtype=dtype)
        if kind == torch.bool:
            return torch.ones(spec["shape"], device=device, dtype=kind)
        return torch.full(spec["shape"], 500, device=device, dtype=kind)
    return [make(spec) for spec in call["args"]], {name: make(spec) for name, spec in call["kwargs"].items()}


def load_transformer(model: Path, device, dtype: torch.dtype, checkpointing: bool):
    from diffusers import EasyAnimateTransformer3DModel
    transformer = EasyAnimateTransformer3DModel.from_pretrained(str(model / "transformer"), torch_dtype=dtype)
    transformer.to(device).train()
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer


def _output(result) -> torch.Tensor:
    return result[0] if isinstance(result, (tuple, list)) else result.sample


def model_flops(model: Path, call: dict) -> float:
    """FLOPs of one forward+backward of the transformer on ``call``'s shapes, counted by torch's FlopCounterMode
    on the meta device (nothing allocated, no recomputation counted: model FLOPs, not hardware FLOPs)."""
    from diffusers import EasyAnimateTransformer3DModel
    from torch.utils.flop_counter import FlopCounterMode
    config = EasyAnimateTransformer3DModel.load_config(str(model / "transformer"))
    with torch.device("meta"):
        transformer = EasyAnimateTransformer3DModel.from_config(config).to(torch.bfloat16)
    args, kwargs = make_inputs(call, "meta", torch.bfloat16)
    with FlopCounterMode(display=False) as counter:
        _output(transformer(*args, **kwargs)).float().square().mean().backward()
    return float(counter.get_total_flops())


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def forward_backward(model: Path, call: dict, *, device, dtype: torch.dtype, checkpointing: bool,
                     repeats: int) -> dict:
    """Seconds per pure forward+backward of the transformer on ``call``'s shapes (median of ``repeats`` after one
    warm-up) and peak memory after each phase (load, forward, backward), bytes (None on CPU)."""
    cuda = torch.device(device).type == "cuda"
    memory = {}

    def mark(phase: str) -> None:
        if cuda:
            torch.cuda.synchronize()
            memory[phase] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    transformer = load_transformer(model, device, dtype, checkpointing)
    mark("load")
    args, kwargs = make_inputs(call, device, dtype)
    times = []
    for i in range(repeats + 1):
        _sync(device)
        started = time.perf_counter()
        loss = _output(transformer(*args, **kwargs)).float().square().mean()
        if i == 0:
            mark("forward")
        loss.backward()
        if i == 0:
            mark("backward")
        _sync(device)
        times.append(time.perf_counter() - started)
        transformer.zero_grad(set_to_none=True)
    return {"seconds": statistics.median(times[1:]), "peak_bytes": memory or None}


def loader_rate(train_flags: list[str], *, workers: int, batches: int, frame_interval: int = 4) -> dict:
    """Batches per second of the trainer's own DataLoader (rank 0 of 1) with ``workers`` workers, after the
    first batch (worker start-up), over at most ``batches`` batches (epochs repeat as needed)."""
    from easyanimate.config import parse_args
    from easyanimate.data.loader import build_train_dataloader
    cfg = parse_args([*train_flags, f"--dataloader_num_workers={workers}"])
    data = build_train_dataloader(cfg, rank=0, world_size=1, float_pixels=False, frame_interval=frame_interval)
    started, first, seen, epoch = time.perf_counter(), None, 0, 0
    while seen < batches:
        data.sampler.set_epoch(epoch)
        for _batch in data.loader:
            seen += 1
            if first is None:
                first = time.perf_counter()
            if seen >= batches:
                break
        epoch += 1
    elapsed = time.perf_counter() - first
    return {"batches": seen - 1, "seconds": elapsed, "batches_per_s": (seen - 1) / elapsed if elapsed else None,
            "first_batch_s": first - started}
