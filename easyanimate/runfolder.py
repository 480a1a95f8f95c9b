"""The run folder's contract, shared by the trainer and the SLURM layer: names, markers, fences. Standard library only.

``output_dir`` holds ``checkpoint-STEP/`` folders (a ``manifest.json`` inside, written last, marks a finished
save; ``.tmp-``/``.deleting-`` prefixes are work in progress), the outcome markers ``requeue.json`` (a
signal-triggered save committed on every rank) and ``complete.json`` (the last step is done), and ``fence.json``,
the fence: the attempt that owns the folder now. A process that belongs to an older attempt (a node that lost
contact, a slow teardown) is refused when it tries to commit a checkpoint or write a marker. Files are written
atomically: readers see the old version or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Optional

# ---- outcome markers and signals -------------------------------------------------------------------------------

REQUEUE_MARKER = "requeue.json"
COMPLETE_MARKER = "complete.json"
FENCE = "fence.json"
# SLURM's warning (--signal), preemption and scontrol requeue/scancel: each asks for a save at the next step.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry".
REQUEUE_EXIT_CODE = 75
# The launcher hands the trainer its attempt's id in this variable; runs outside SLURM have none and are unfenced.
ATTEMPT_ENV = "EASYANIMATE_ATTEMPT"

# ---- checkpoint naming ----------------------------------------------------------------------------------------

CHECKPOINT_PREFIX = "checkpoint-"
TEMP_PREFIX = ".tmp-checkpoint-"
DELETING_PREFIX = ".deleting-checkpoint-"
ABANDONED_PREFIX = "abandoned-checkpoint-"
MANIFEST = "manifest.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(path: str | Path) -> Optional[int]:
    """STEP of a ``checkpoint-STEP`` folder name, else None."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """``checkpoint-STEP`` folders, newest step first; committed or not (see ``committed_checkpoints``)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def committed_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders whose manifest exists (a finished save; contents not verified), newest first."""
    return [p for p in checkpoint_dirs(output_dir) if (p / MANIFEST).is_file()]


def latest_checkpoint(output_dir: str | Path) -> Optional[dict]:
    """The newest committed checkpoint as ``{"step", "path"}``, or None."""
    committed = committed_checkpoints(output_dir)
    return {"step": checkpoint_step(committed[0]), "path": str(committed[0])} if committed else None


# ---- durable files --------------------------------------------------------------------------------------------

def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, data: dict, *, mode: int = 0o644) -> Path:
    """Write-to-temp, fsync, rename, fsync the folder. ``mode`` 0o600 for files that hold secrets: the temp file
    is created with it, so the content is never readable by others, not even for a moment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), mode)  # the umask may have narrowed O_CREAT's mode; never widens beyond it
        json.dump(data, file, indent=2, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)
    return path


def read_json(path: str | Path) -> Optional[dict]:
    """The JSON object in ``path``, or None when it is absent or not (yet) valid."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


# ---- markers --------------------------------------------------------------------------------------------------

def write_marker(output_dir: str | Path, name: str, data: dict) -> Path:
    """An outcome marker, stamped with the time and this process's attempt; refused for a stale attempt."""
    check_fence(output_dir)
    return write_json_atomic(Path(output_dir) / name, {**data, "time": time.time(),
                                                       "attempt": os.environ.get(ATTEMPT_ENV)})


def read_marker(output_dir: str | Path, name: str, since: float = 0.0) -> Optional[dict]:
    """The marker if it was written at or after ``since`` (a marker from an earlier attempt is not this one's)."""
    marker = read_json(Path(output_dir) / name)
    return marker if marker is not None and marker.get("time", 0) >= since else None


def clear_markers(output_dir: str | Path) -> None:
    """At training start: both markers describe the previous attempt (a stale complete.json would tell the SLURM
    layer that a run which then crashes had finished)."""
    for name in (REQUEUE_MARKER, COMPLETE_MARKER):
        (Path(output_dir) / name).unlink(missing_ok=True)


# ---- the fence ------------------------------------------------------------------------------------------------

class StaleAttemptError(RuntimeError):
    """This process belongs to an attempt that no longer owns the run folder; it must not commit anything."""


def claim(output_dir: str | Path, attempt: str) -> Path:
    """The launcher, when an attempt starts (before any trainer runs): from now on only ``attempt`` commits."""
    return write_json_atomic(Path(output_dir) / FENCE, {"attempt": attempt, "claimed": time.time(),
                                                        "host": os.uname().nodename, "pid": os.getpid()})


def current_attempt(output_dir: str | Path) -> Optional[str]:
    fence = read_json(Path(output_dir) / FENCE)
    return None if fence is None else fence.get("attempt")


def check_fence(output_dir: str | Path, attempt: Optional[str] = None) -> None:
    """Raise ``StaleAttemptError`` when the folder has been claimed by another attempt than ours (``attempt``,
    default: this process's ``EASYANIMATE_ATTEMPT``). Unfenced runs (no id, or no claim yet) pass."""
    mine = attempt if attempt is not None else os.environ.get(ATTEMPT_ENV)
    owner = current_attempt(output_dir)
    if mine and owner and owner != mine:
        raise StaleAttemptError(f"{output_dir} now belongs to attempt {owner}; this process (attempt {mine}) is "
                                "left over from an earlier one and may not commit checkpoints or markers")


def ignore_preemption_signals() -> None:
    """For helper processes of a trainer (DataLoader workers): SLURM signals every process of the step, the
    trainer handles preemption, and a helper that kept the default action would die of SIGUSR1/SIGUSR2."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
