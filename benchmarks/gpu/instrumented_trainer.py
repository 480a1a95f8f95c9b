"""easyanimate/train_control.py, instrumented for the GPU check (used as the job's ``entry``; flags unchanged).

EASYANIMATE_GPU_CHECK_LOG=FILE: rank 0 appends one JSON line per transformer forward: its wall time, the shape and
dtype of every tensor argument (so the check can count FLOPs and replay the same batch), and the GPU memory
allocated and peaked since the previous forward (one forward per optimizer step at gradient_accumulation_steps=1).
FILE.phases gets one line per call of the loop's compute (``loop.micro_step``: VAE and text encoding, forward, loss,
backward; ``loop.optimizer_step``: clipping, optimizer, schedule, EMA) with its start and end, the device
synchronised on both sides: what a step spends outside them is the loop's own overhead (data waits included).
EASYANIMATE_GPU_CHECK_DETERMINISTIC=1: deterministic kernels (needs CUBLAS_WORKSPACE_CONFIG set before CUDA starts).
"""

import json
import os
import runpy
import sys
import time
from pathlib import Path

import torch

TRAIN = Path(__file__).resolve().parents[2] / "easyanimate" / "train_control.py"


def describe(value):
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return {"value": value}
    return {"type": type(value).__name__}


def record_forwards(path: str) -> None:
    from diffusers import EasyAnimateTransformer3DModel
    real = EasyAnimateTransformer3DModel.forward

    def forward(self, *args, **kwargs):
        if int(os.environ.get("RANK", "0")) == 0:
            line = {"time": time.perf_counter(), "args": [describe(a) for a in args],
                    "kwargs": {k: describe(v) for k, v in kwargs.items()}}
            if torch.cuda.is_available():
                line |= {"allocated": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()}
                torch.cuda.reset_peak_memory_stats()
            with open(path, "a") as out:
                out.write(json.dumps(line) + "\n")
        return real(self, *args, **kwargs)

    EasyAnimateTransformer3DModel.forward = forward


def record_compute(path: str) -> None:
    from easyanimate.training import loop

    def timed(name, real):
        def call(*args, **kwargs):
            if int(os.environ.get("RANK", "0")) != 0:
                return real(*args, **kwargs)
            sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
            sync()
            start = time.perf_counter()
            result = real(*args, **kwargs)
            sync()
            with open(path, "a") as out:
                out.write(json.dumps({"phase": name, "start": start, "end": time.perf_counter()}) + "\n")
            return result
        return call

    for name in ("micro_step", "optimizer_step"):  # looked up in loop's globals at each call
        setattr(loop, name, timed(name, getattr(loop, name)))


if __name__ == "__main__":
    if os.environ.get("EASYANIMATE_GPU_CHECK_DETERMINISTIC") == "1":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    if os.environ.get("EASYANIMATE_GPU_CHECK_LOG"):
        record_forwards(os.environ["EASYANIMATE_GPU_CHECK_LOG"])
        record_compute(os.environ["EASYANIMATE_GPU_CHECK_LOG"] + ".phases")
    sys.argv[0] = str(TRAIN)
    runpy.run_path(str(TRAIN), run_name="__main__")
