"""Background checkpoint writes: stage a save in host memory, copy and write it on a thread.

``stage(save)`` runs ``save`` (accelerate's ``save_state``, DeepSpeed's ``save_checkpoint`` inside it, our own
``torch.save`` of the rank state) with ``torch.save`` and accelerate's safetensors writer intercepted: each call is
recorded instead of run, its object rebuilt with host-memory buffers (``HostBuffers``, kept between saves) in
place of its tensors (every storage once, views kept as views). ``run_copies`` fills the buffers on the writer
thread while ``CopyGuard`` holds the next optimizer step, so the copy overlaps the next forward/backward and
still captures the state at the save. ``StagedWrite.write`` then makes the recorded call: the files, names and
formats are those of a synchronous save (tensors staged from a GPU are recorded as CPU tensors: every loader in
the chain maps or copies them to the device). Small writes the libraries make otherwise (DeepSpeed's
``latest``, the model config) happen at once. ``BackgroundWrite`` runs the work on a daemon thread.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook


@dataclass
class StagedWrite:
    """One deferred ``writer(obj, path, **kwargs)`` with ``obj`` already copied to host memory."""
    writer: Callable
    obj: Any
    path: str
    kwargs: dict = field(default_factory=dict)

    def write(self) -> None:
        self.writer(self.obj, self.path, **self.kwargs)


class HostBuffers:
    """Host memory for staging, kept from one save to the next: copying into freshly allocated memory pays a
    page fault per 4 KiB page (measured 6x slower than into memory touched before, benchmarks/checkpoint_save.py)
    and pinned memory (for GPU tensors) is slower still to allocate. A save's buffers serve the next save of the
    same shapes; buffers the latest save did not use are dropped. Costs host RAM of one checkpoint per rank."""

    def __init__(self):
        self._free: dict[tuple[int, bool], list[torch.Tensor]] = {}
        self._in_use: list[tuple[tuple[int, bool], torch.Tensor]] = []

    def take(self, nbytes: int, pinned: bool) -> torch.Tensor:
        key = (nbytes, pinned)
        free = self._free.get(key)
        buffer = free.pop() if free else torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        self._in_use.append((key, buffer))
        return buffer

    def release(self) -> None:
        """After the staged writes are on disk: their buffers serve the next save."""
        self._free = {}
        for key, buffer in self._in_use:
            self._free.setdefault(key, []).append(buffer)
        self._in_use = []


def copy_to_host(obj: Any, storages: dict | None = None, buffers: HostBuffers | None = None,
                 deferred: list | None = None) -> Any:
    """``obj`` with every tensor copied to (CPU) host memory; containers rebuilt, other leaves deep-copied.
    ``storages`` maps a source storage to its copy, so tensors sharing a storage still share it (as torch.save
    would write them) and each storage is copied once; ``buffers`` supplies the memory (default: fresh). With
    ``deferred``, tensor bytes are not copied: (source, target) pairs are appended for ``run_copies``."""
    storages = {} if storages is None else storages
    buffers = HostBuffers() if buffers is None else buffers
    if isinstance(obj, torch.Tensor):
        return _copy_tensor(obj, storages, buffers, deferred)
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps the type and attributes (a state_dict's _metadata)
        for key, value in obj.items():
            out[key] = copy_to_host(value, storages, buffers, deferred)
        return out
    if isinstance(obj, list):
        return [copy_to_host(value, storages, buffers, deferred) for value in obj]
    if type(obj) is tuple:
        return tuple(copy_to_host(value, storages, buffers, deferred) for value in obj)
    if isinstance(obj, (str, bytes, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)):
        return obj
    return copy.deepcopy(obj)


def _copy_tensor(tensor: torch.Tensor, storages: dict, buffers: HostBuffers, deferred: list | None) -> torch.Tensor:
    source = tensor.untyped_storage()
    key = (source.device, source.data_ptr(), source.nbytes())
    if key not in storages:
        raw = torch.empty(0, dtype=torch.uint8, device=source.device).set_(source)
        target = buffers.take(raw.numel(), pinned=raw.is_cuda)
        if deferred is None:
            target.copy_(raw, non_blocking=raw.is_cuda)
        else:
            deferred.append((raw, target))
        storages[key] = target.untyped_storage()
    out = torch.empty(0, dtype=tensor.dtype).set_(storages[key], tensor.storage_offset(), tensor.size(),
                                                  tensor.stride())
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(out, requires_grad=tensor.requires_grad)
    # torch.save records requires_grad of views too (DeepSpeed saves narrowed views of its fp32 partitions).
    return out.requires_grad_(tensor.requires_grad) if out.is_floating_point() or out.is_complex() else out


@contextlib.contextmanager
def _intercepted(staged: list[StagedWrite], storages: dict, buffers: HostBuffers, copies: list):
    """Replace torch.save and accelerate's safetensors writer by recorders for the duration."""
    import accelerate.utils.other as accelerate_other
    originals = {(torch, "save"): torch.save, (accelerate_other, "safe_save_file"): accelerate_other.safe_save_file}

    def recorder(original):
        def record(obj, f, *args, **kwargs):
            if args or not isinstance(f, (str, os.PathLike)):  # a file object cannot wait: write it now
                return original(obj, f, *args, **kwargs)
            staged.append(StagedWrite(original, copy_to_host(obj, storages, buffers, copies), os.fspath(f), kwargs))
        return record

    for (module, name), original in originals.items():
        setattr(module, name, recorder(original))
    try:
        yield
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)


@dataclass
class Staged:
    """A staged save: its writes, whose tensors live in host buffers that ``copies`` (source, buffer) fill."""
    writes: list[StagedWrite]
    copies: list[tuple[torch.Tensor, torch.Tensor]]


def stage(save: Callable[[], None], buffers: HostBuffers) -> Staged:
    """Run ``save`` with its torch.save/safetensors writes recorded, their tensors replaced by buffers from
    ``buffers``; the bytes are copied later by ``run_copies``, which must finish before anything changes the
    tensors (``CopyGuard``)."""
    staged: list[StagedWrite] = []
    copies: list = []
    with _intercepted(staged, {}, buffers, copies):
        save()
    return Staged(staged, copies)


def run_copies(copies: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The deferred copies (on the caller's thread; device-to-host copies queue behind the work already issued
    on the device, so they read the tensors as they were when staged)."""
    for source, target in copies:
        target.copy_(source, non_blocking=source.is_cuda)
    # This thread's current device is cuda:0 whatever the rank's is: wait on each source's own device.
    for device in {source.device for source, _ in copies if source.is_cuda}:
        torch.cuda.synchronize(device)


class CopyGuard:
    """Holds every optimizer's ``step`` (torch's global step pre-hook: plain optimizers, accelerate's wrapper and
    the base optimizer inside DeepSpeed's ZeRO) until the deferred copies are made. Weights, optimizer state
    and EMA change only in or after ``step``, so a snapshot copied during the next forward/backward is the state
    at the save. ``waited_s``: how long steps were held (part of the stall); ``copy_s``: how long the copies
    took on the writer thread."""

    def __init__(self):
        self.copied = threading.Event()
        self.waited_s = self.copy_s = 0.0
        self._handle = register_optimizer_step_pre_hook(self._before_step)

    def _before_step(self, *_args) -> None:
        if not self.copied.is_set():
            started = time.perf_counter()
            self.copied.wait()
            self.waited_s += time.perf_counter() - started

    def remove(self) -> None:
        """Once the save is committed (not from the hook: torch is iterating over the hooks then)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class BackgroundWrite:
    """``work()`` on a daemon thread; ``done`` without blocking, ``outcome`` (value or exception) after ``wait``.
    A daemon, so a failing run does not hang at exit on a write nobody will commit."""

    def __init__(self, work: Callable[[], Any], name: str):
        self._work, self._value, self._error = work, None, None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._work()
        except BaseException as error:  # noqa: BLE001 (handed to the main thread, which reports it on every rank)
            self._error = error

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()

    def outcome(self) -> tuple[Any, BaseException | None]:
        self.wait()
        return self._value, self._error
