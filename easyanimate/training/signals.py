"""Preemption: turn SLURM's warning signals into a checkpoint at the next step boundary and a requeue marker.

SIGTERM, SIGUSR1 and SIGUSR2 only set a flag (a second signal during a save changes nothing); at a step boundary
the ranks agree with one collective and the loop saves and exits with ``REQUEUE_EXIT_CODE``. Launchers lose that
code (torchrun reports any failed worker as 1), so the durable record is a marker file in the run folder:
``requeue.json`` after a signal-triggered save has committed, ``complete.json`` when the last step is done
(names, signal set and exit code: ``easyanimate.runfolder``). SLURM signals every process of the step, DataLoader
workers included, and USR1/USR2 kill a process that does not handle them: workers call
``runfolder.ignore_preemption_signals`` from their ``worker_init_fn``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from easyanimate import distributed, runfolder
from easyanimate.runfolder import PREEMPTION_SIGNALS, REQUEUE_EXIT_CODE  # noqa: F401 (the loop's exit code)


class PreemptionHandler:
    """Records the first preemption signal; ``stop_requested`` makes every rank agree at a step boundary."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS):
        self.signals = signals
        self.received: str | None = None
        self.received_at: float | None = None
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> "PreemptionHandler":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame) -> None:
        # Only set a flag: no locks (logging), no I/O beyond one write(2), nothing that could break a save.
        name = signal.Signals(signum).name
        if self.received is None:
            self.received, self.received_at = name, time.time()
        os.write(2, f"[rank{distributed.rank()}] received {name}: will checkpoint at the next step boundary\n"
                 .encode())

    def stop_requested(self) -> bool:
        """True on every rank if any rank got a signal. A collective: call it at the same point on all ranks."""
        return distributed.any_true(self.received is not None)

    def write_requeue_marker(self, output_dir: str | Path, step: int, checkpoint: str | Path) -> Path:
        """Rank 0, after the signal-triggered save has committed on every rank."""
        return runfolder.write_marker(output_dir, runfolder.REQUEUE_MARKER, {
            "step": step, "signal": self.received, "checkpoint": str(checkpoint),
            "signal_received_at": self.received_at})


def write_complete_marker(output_dir: str | Path, step: int, checkpoint: str | Path | None = None) -> Path:
    """Rank 0, when training has reached its last step; ``checkpoint`` defaults to output_dir/checkpoint-STEP."""
    if checkpoint is None:
        final = runfolder.checkpoint_dir(output_dir, step)
        checkpoint = final if final.is_dir() else None
    return runfolder.write_marker(output_dir, runfolder.COMPLETE_MARKER, {
        "step": step, "checkpoint": None if checkpoint is None else str(checkpoint)})


def clear_requeue_marker(output_dir: str | Path) -> None:
    """At training start (rank 0): both outcome markers describe the previous attempt, not this one (a stale
    complete.json would tell the SLURM layer that a run which then crashes had finished)."""
    if distributed.is_main():
        runfolder.clear_markers(output_dir)


def worker_init_fn(_worker_id: int) -> None:
    """A ready-made ``worker_init_fn`` for loaders that need nothing else in their workers."""
    runfolder.ignore_preemption_signals()
