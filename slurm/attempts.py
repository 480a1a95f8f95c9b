"""Attempt accounting: every run of a job (first start and each requeue) is an attempt with a recorded outcome —
completed, preempted, timed_out, crashed, node_failure, cancelled or budget_exhausted — and its own retry budget.

The evidence is ours, not guessed from elapsed time: the trainer's markers in the run folder (``requeue.json``
after a signal-triggered save committed on every rank, ``complete.json`` at the last step), what each node's
launcher saw (signals, exit code), whether the batch shell got SIGTERM (then SLURM itself is ending the attempt),
and SLURM's own view (``scontrol show job``: PreemptTime, EndTime). A crash is never requeued.
Standard library only.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from easyanimate import runfolder

CANCEL_MARKER = "cancel.json"  # in the job folder: written by `submit.py cancel` before it calls scancel
# slurmctld checks time limits every 30 s, so the warning signal can come up to ~30 s before --signal's @N.
TIMEOUT_SLACK_S = 90

COMPLETED, PREEMPTED, TIMED_OUT, CRASHED = "completed", "preempted", "timed_out", "crashed"
NODE_FAILURE, CANCELLED, BUDGET_EXHAUSTED = "node_failure", "cancelled", "budget_exhausted"
CONFIG_ERROR = "config_error"  # a node could not start training as configured (no container runtime, no image)
BUDGETS = {PREEMPTED: "max_preemptions", TIMED_OUT: "max_timeouts", NODE_FAILURE: "max_node_failures"}


@dataclass
class Outcome:
    kind: str
    detail: str
    requeue: bool = False          # whether *we* must call scontrol requeue (never when SLURM already does)
    step: Optional[int] = None     # the step the committed checkpoint holds, if this attempt saved one
    checkpoint: Optional[str] = None
    save_latency_s: Optional[float] = None  # signal received -> checkpoint committed


@dataclass
class Evidence:
    """Everything ``classify`` looks at, gathered by ``gather`` (tests build it by hand)."""
    started: float
    now: float
    expected_nodes: int
    nodes: list[dict] = field(default_factory=list)   # node records that were written
    srun_status: int = 0
    batch_signal: str = ""
    requeue_marker: Optional[dict] = None              # only if written during this attempt
    complete_marker: Optional[dict] = None
    preempt_time: bool = False                         # SLURM set PreemptTime on this job
    end_time: Optional[float] = None                   # SLURM's EndTime (time limit) for this attempt
    cancel_requested: bool = False                     # `submit.py cancel` ran during this attempt
    signal_lead_s: int = 0


def _first_signal(nodes: list[dict]) -> Optional[dict]:
    received = [s for node in nodes for s in node.get("signals", [])]
    return min(received, key=lambda s: s["time"]) if received else None


def _interruption(ev: Evidence, signal_time: float) -> tuple[str, str]:
    """(kind, why) of an interruption signalled at ``signal_time``."""
    if ev.preempt_time:
        return PREEMPTED, "SLURM preempted the job for a higher-priority one"
    if ev.end_time is not None and ev.end_time - signal_time <= ev.signal_lead_s + TIMEOUT_SLACK_S:
        return TIMED_OUT, f"signal {ev.end_time - signal_time:.0f}s before the time limit"
    return PREEMPTED, "signal well before the time limit (scancel --signal, scontrol requeue, an admin)"


def classify(ev: Evidence) -> Outcome:
    if ev.complete_marker is not None:
        return Outcome(COMPLETED, f"training reached step {ev.complete_marker.get('step')}",
                       step=ev.complete_marker.get("step"), checkpoint=ev.complete_marker.get("checkpoint"))
    misconfigured = [n for n in ev.nodes if n.get("config_error")]
    if misconfigured:  # the same job would fail the same way: never requeued
        n = misconfigured[0]
        return Outcome(CONFIG_ERROR, f"node {n['node_rank']} ({n.get('hostname')}): {n['config_error']}; not "
                       "requeued: fix the job and submit it again")
    first = _first_signal(ev.nodes)
    marker = ev.requeue_marker
    if ev.cancel_requested:
        saved = f"; checkpoint at step {marker.get('step')} committed" if marker else ""
        return Outcome(CANCELLED, f"cancelled by the user (submit.py cancel){saved}",
                       step=(marker or {}).get("step"), checkpoint=(marker or {}).get("checkpoint"))
    if marker is not None:
        signal_time = marker.get("signal_received_at") or (first or {}).get("time") or marker.get("time")
        kind, why = _interruption(ev, signal_time)
        latency = round(marker["time"] - signal_time, 3) if signal_time else None
        saved = f"{marker.get('signal')} ({why}) -> checkpoint at step {marker.get('step')} committed by every rank"
        common = dict(step=marker.get("step"), checkpoint=marker.get("checkpoint"), save_latency_s=latency)
        if ev.batch_signal == "TERM":
            return Outcome(kind, f"{saved}; SLURM itself is ending this attempt and requeues it unless it was "
                           "cancelled", **common)
        return Outcome(kind, saved, requeue=True, **common)
    finished = [n for n in ev.nodes if "exit_code" in n]
    crashed = [n for n in finished if n["exit_code"] != 0 and not n.get("signals")]
    if crashed:
        n = crashed[0]
        return Outcome(CRASHED, f"node {n['node_rank']} ({n.get('hostname')}) exited {n['exit_code']} without "
                       "a preemption signal; not requeued (see its log)")
    # A node that neither exited nor heard a signal died without being told (a node killed after SLURM's
    # KillWait still recorded the signal that preceded it).
    reported = {n["node_rank"]: n for n in ev.nodes}
    silent = [r for r in range(ev.expected_nodes)
              if r not in reported or ("exit_code" not in reported[r] and not reported[r].get("signals"))]
    if silent:
        return Outcome(NODE_FAILURE, f"node(s) {silent} never reported an exit: died or lost", requeue=True)
    if first is not None:
        kind, why = _interruption(ev, first["time"])
        if ev.batch_signal == "TERM":
            return Outcome(CANCELLED if kind == PREEMPTED and not ev.preempt_time else kind,
                           f"{first['name']} ({why}), then SIGTERM from SLURM before a checkpoint committed")
        return Outcome(kind, f"{first['name']} ({why}) but no checkpoint committed; resumes from the last "
                       "periodic one", requeue=True)
    if ev.batch_signal == "TERM":
        return Outcome(CANCELLED, "SIGTERM from SLURM (scancel or time limit) before training reacted")
    return Outcome(CRASHED, f"training stopped (srun exit {ev.srun_status}) without reaching its last step")


def over_budget(history: list[dict], limits: dict[str, int]) -> Optional[str]:
    """Why no further attempt may run, or None. ``history`` is the outcomes of earlier attempts."""
    for kind, limit_name in BUDGETS.items():
        used = sum(1 for outcome in history if outcome.get("kind") == kind)
        if used > limits[limit_name]:
            return f"{used} attempts ended {kind}, more than {limit_name}={limits[limit_name]}"
    return None


# --- records on disk ------------------------------------------------------------------------------------------

def attempt_dirs(job_dir: Path) -> list[Path]:
    """Every attempt folder, oldest first (job id, then restart count)."""
    def order(path: Path) -> tuple:
        job, _, restart = path.name.partition(".")
        return (int(job) if job.isdigit() else 0, job, int(restart) if restart.isdigit() else 0)
    folder = Path(job_dir) / "attempts"
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=order) if folder.is_dir() else []


def node_records(attempt: Path) -> list[dict]:
    return [r for p in sorted(attempt.glob("node*.json")) if (r := runfolder.read_json(p)) is not None]


# --- SLURM's view --------------------------------------------------------------------------------------------

def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (empty when SLURM does not know the job, or is absent)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", out))


def slurm_time(value: Optional[str]) -> Optional[float]:
    if not value or value in ("None", "Unknown"):
        return None
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def requeue(job_id: str) -> Optional[str]:
    """Ask SLURM to requeue the job; returns an error message or None."""
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()


def outcome_dict(outcome: Outcome) -> dict:
    return {**asdict(outcome), "ended": time.time()}
