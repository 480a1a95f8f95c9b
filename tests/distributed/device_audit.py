"""Audit the device of every torch.distributed collective a process issues, against a declared backend.

``install("cuda", log)`` makes the default process group declare that it serves CUDA tensors only (what NCCL
declares) while the real group stays gloo on CPU memory, so GPU routing can be checked on a machine without one:

- ``torch.distributed.get_backend_config`` answers ``"cuda:audit"``: what the package reads to choose a device;
- tensors the package makes on a device of the declared type (``torch.tensor(..., device="cuda:0")``) are made
  in CPU memory and tagged as being on the declared device, so the real collective still runs;
- every collective is recorded (one JSON line, flushed, per call) with its caller and the device of each tensor;
  a collective issued by this repository's code (not by accelerate, DeepSpeed or torch itself, which choose
  their own devices) is a violation when one of its tensors, or the device it names, is of another type.

Violations are recorded, not raised: a raise on one rank would leave the other waiting in the collective.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
TORCH_DIR = str(Path(torch.__file__).parent)
TENSOR_COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "gather",
                      "scatter", "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
                      "send", "recv", "isend", "irecv")
OBJECT_COLLECTIVES = ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list")
FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "full", "empty")
TAG = "_audit_declared_device"


def device_types(value) -> list[str]:
    """The device type of every tensor in ``value`` (nested lists and tuples); a tagged tensor counts as being on
    the device it was made for."""
    if isinstance(value, torch.Tensor):
        return [getattr(value, TAG, value.device.type)]
    if isinstance(value, (list, tuple)):
        return [kind for item in value for kind in device_types(item)]
    return []


def caller() -> str:
    """file:line of the innermost frame outside torch and this module: who issued the collective."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(TORCH_DIR) and path != __file__:
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def is_ours(where: str) -> bool:
    """Issued by this repository's code (the package or a test), not by an installed library."""
    return where.startswith(str(REPO)) and "site-packages" not in where


class Audit:
    def __init__(self, declared: str, log: Path | None):
        self.declared, self.log = declared, log
        self.records: list[dict] = []
        self.patched: list[tuple[object, str, object]] = []
        self._depth = 0  # object collectives call tensor collectives inside torch: record the outer call only

    def check(self, name: str, args: tuple, kwargs: dict) -> dict:
        where = caller()
        kinds = device_types(list(args) + list(kwargs.values()))
        named = kwargs.get("device")
        if named is not None:
            kinds.append(torch.device(named).type)
        record = {"op": name, "caller": where, "devices": kinds, "ours": is_ours(where),
                  "rank": dist.get_rank() if dist.is_initialized() else None}
        record["ok"] = not record["ours"] or all(kind == self.declared for kind in kinds)
        self.records.append(record)
        if self.log is not None:
            with open(self.log, "a") as out:
                out.write(json.dumps(record) + "\n")
        return record

    def patch(self, owner, name: str, replacement) -> None:
        self.patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def restore(self) -> None:
        """Undo every patch (tests that install the audit in the pytest process)."""
        for owner, name, original in reversed(self.patched):
            setattr(owner, name, original)
        self.patched.clear()

    def violations(self) -> list[dict]:
        return [r for r in self.records if not r["ok"]]

    def wrap_collective(self, name: str, real):
        @functools.wraps(real)
        def audited(*args, **kwargs):
            if self._depth:
                return real(*args, **kwargs)
            self.check(name, args, kwargs)
            kwargs = self._real_kwargs(name, kwargs)
            self._depth += 1
            try:
                return real(*args, **kwargs)
            finally:
                self._depth -= 1
        return audited

    def _real_kwargs(self, name: str, kwargs: dict) -> dict:
        # The real group is gloo on CPU memory: a device of the declared type it cannot serve is dropped here,
        # after it was recorded.
        kwargs = dict(kwargs)
        if name == "barrier":
            kwargs.pop("device_ids", None)
        if kwargs.get("device") is not None and torch.device(kwargs["device"]).type == self.declared:
            kwargs["device"] = torch.device("cpu")
        return kwargs

    def wrap_factory(self, real):
        @functools.wraps(real)
        def made_on_declared_device(*args, **kwargs):
            device = kwargs.get("device")
            if device is None or self.declared == "cpu" or torch.device(device).type != self.declared:
                return real(*args, **kwargs)
            tensor = real(*args, **{**kwargs, "device": "cpu"})
            setattr(tensor, TAG, self.declared)
            return tensor
        return made_on_declared_device

    def declared_backend_config(self, real):
        @functools.wraps(real)
        def get_backend_config(group=None):
            real(group)  # raises as the real one does when there is no group
            return f"{self.declared}:audit"
        return get_backend_config


def install(declared: str, log: str | Path | None = None) -> Audit:
    """Patch torch.distributed and torch's factories in this process (see the module docstring)."""
    audit = Audit(declared, Path(log) if log else None)
    for name in (*TENSOR_COLLECTIVES, *OBJECT_COLLECTIVES, "barrier"):
        audited = audit.wrap_collective(name, getattr(dist, name))
        audit.patch(dist, name, audited)
        audit.patch(dist.distributed_c10d, name, audited)  # torch's own callers too (depth-guarded)
    if declared != "cpu":
        for name in FACTORIES:
            audit.patch(torch, name, audit.wrap_factory(getattr(torch, name)))
        audit.patch(dist, "get_backend_config", audit.declared_backend_config(dist.get_backend_config))
    return audit


def install_from_env() -> Audit | None:
    """In a launched worker: EASYANIMATE_AUDIT_DEVICE=cuda, EASYANIMATE_AUDIT_DIR=folder for rank{RANK}.jsonl."""
    declared = os.environ.get("EASYANIMATE_AUDIT_DEVICE")
    if not declared:
        return None
    folder = Path(os.environ["EASYANIMATE_AUDIT_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    return install(declared, folder / f"rank{os.environ.get('RANK', '0')}.jsonl")
