"""Bringing a run back after an interrupted attempt: within the retry budget of the attempt's kind, requeue the
job, or where the partition cancels preempted jobs or SLURM refuses the requeue, submit a new job on the same job
folder. Node 0's launcher does it while training runs, as soon as the trainer's ``requeue.json`` is committed, or
at the SIGTERM of the time limit when this attempt committed a checkpoint (``RequeueWatcher``, as submitit and
Lightning requeue from inside the job); the batch shell's ``end`` only when nobody did. Exactly one of them acts per
attempt. Standard library only.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

from easyanimate import runfolder
from slurm import attempts, command
from slurm.command import NodeContext
from slurm.spec import JobSpec

logger = logging.getLogger("slurm.launch")


def history(spec: JobSpec, job_id: str, *, before: str) -> list[dict]:
    """Outcomes of the run's earlier attempts: this job's and those of the jobs it was resubmitted for."""
    chain = attempts.lineage(Path(spec.job_dir), job_id)
    outcomes = []
    for folder in attempts.attempt_dirs(Path(spec.job_dir)):
        record = runfolder.read_json(folder / "attempt.json")
        if folder.name.partition(".")[0] in chain and folder.name != before and record and record.get("outcome"):
            outcomes.append(record["outcome"])
    return outcomes


def limits(spec: JobSpec) -> dict[str, int]:
    return {name: getattr(spec, name) for name in attempts.BUDGETS.values()}


def gather(spec: JobSpec, folder: Path, num_nodes: int, srun_status: int, batch_signal: str, *,
           job_info: dict[str, str], restart_count: int = 0) -> attempts.Evidence:
    """What one attempt left behind: node records, the trainer's markers, SLURM's view of the job."""
    record = runfolder.read_json(folder / "attempt.json") or {"started": 0.0}
    output = Path(spec.output_dir)
    return attempts.Evidence(
        started=record["started"], now=time.time(), expected_nodes=num_nodes,
        nodes=attempts.node_records(folder), srun_status=srun_status, batch_signal=batch_signal,
        requeue_marker=runfolder.read_marker(output, runfolder.REQUEUE_MARKER, record["started"]),
        complete_marker=runfolder.read_marker(output, runfolder.COMPLETE_MARKER, record["started"]),
        preempt_time=attempts.slurm_time(job_info.get("PreemptTime")) is not None,
        end_time=attempts.slurm_time(job_info.get("EndTime")), signal_lead_s=spec.signal_lead_s,
        slurm_requeued=attempts.slurm_requeued(job_info, restart_count) if job_info else False,
        time_limit=attempts.at_time_limit(job_info, restart_count),
        resumed_step=(record.get("resume_from") or {}).get("step", 0), committed=runfolder.latest_checkpoint(output),
        cancel_requested=runfolder.read_marker(Path(spec.job_dir), attempts.CANCEL_MARKER, record["started"])
        is not None)


def bring_back(spec: JobSpec, node: NodeContext, kind: str, job_info: dict[str, str], requeue, *,
               slurm_view=attempts.scontrol_job, settle_s: float = 30.0) -> str:
    """Requeue the job; where the partition cancels preempted jobs, or SLURM refuses the requeue and is not
    bringing the job back itself, submit a new job on the same job folder instead (same spec, same budgets).
    Returns what was done."""
    partition = job_info.get("Partition") or spec.partition
    mode = attempts.preempt_mode(partition) if kind == attempts.PREEMPTED else ""
    if mode.startswith("CANCEL"):
        why = f"partition {partition} cancels preempted jobs (PreemptMode=CANCEL)"
    else:
        error = requeue(node.job_id)
        if error is None:
            return f"requeued job {node.job_id}"
        why = f"scontrol requeue {node.job_id} failed: {error or '(no message)'}"
        itself = _slurm_brings_it_back(node, slurm_view, settle_s, requeues_preempted=mode.startswith("REQUEUE"))
        if itself:  # a second job on the same folder would run beside the requeued one
            return f"{itself} ({why}); no resubmission"
    new_id = attempts.resubmit(Path(spec.job_dir), node.job_id, cwd=spec.root)
    return f"resubmitted as job {new_id} ({why})"


def _slurm_brings_it_back(node: NodeContext, slurm_view, settle_s: float, *,
                          requeues_preempted: bool) -> Optional[str]:
    """Why SLURM is already putting the job back in the queue, or None. A refused ``scontrol requeue`` often means
    exactly that: a preemption in a PreemptMode=REQUEUE partition (measured on the test cluster: the requeue was
    refused during the preemption and a resubmission ran beside the requeued job), or a concurrent requeue."""
    deadline = time.monotonic() + settle_s
    while True:
        info = slurm_view(node.job_id)
        if info and attempts.slurm_requeued(info, node.restart_count):
            return f"SLURM requeued job {node.job_id} itself"
        if requeues_preempted and attempts.slurm_time(info.get("PreemptTime")) is not None:
            return f"SLURM requeues preempted job {node.job_id} itself (PreemptMode=REQUEUE)"
        if time.monotonic() >= deadline:
            return None
        time.sleep(1.0)


def close(spec: JobSpec, node: NodeContext, outcome: attempts.Outcome, job_info: dict[str, str], *, requeue,
          by: str) -> dict:
    """Within the budget of its kind, bring the run back; record the attempt's outcome. Returns the record's
    outcome (an attempt another process already closed keeps that process's record)."""
    folder = command.attempt_dir(spec, node)
    if (not outcome.requeue and outcome.kind == attempts.PREEMPTED
            and attempts.cancels_preempted(job_info.get("Partition") or spec.partition)):
        outcome.requeue, outcome.detail = True, f"{outcome.detail}; the partition cancels preempted jobs"
    if outcome.requeue:
        earlier = history(spec, node.job_id, before=node.attempt_id)
        reason = attempts.over_budget(earlier + [{"kind": outcome.kind}], limits(spec))
        if reason:
            outcome.requeue, outcome.detail = False, f"{outcome.detail}; not requeued: {reason}"
    if outcome.requeue:
        if not attempts.take_requeue(folder):  # the other one got there first: its record stands
            return _wait_for_outcome(folder)
        try:
            outcome.detail = f"{outcome.detail}; {bring_back(spec, node, outcome.kind, job_info, requeue)} by {by}"
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            outcome.requeue, outcome.detail = False, f"{outcome.detail}; could not bring it back: {error}"
    record = runfolder.read_json(folder / "attempt.json") or {"job_id": node.job_id, "started": 0.0}
    record["outcome"] = attempts.outcome_dict(outcome)
    runfolder.write_json_atomic(folder / "attempt.json", record)
    log = logger.error if outcome.kind in (attempts.CRASHED, attempts.NODE_FAILURE, attempts.CONFIG_ERROR) or (
        outcome.requeue is False and "could not" in outcome.detail) else logger.info
    log("attempt %s: %s — %s", node.attempt_id, outcome.kind, outcome.detail)
    return record["outcome"]


def _wait_for_outcome(folder: Path, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = runfolder.read_json(folder / "attempt.json") or {}
        if record.get("outcome"):
            return record["outcome"]
        time.sleep(0.2)
    return {"kind": "unknown", "detail": "another process is bringing this attempt back", "requeue": True}


class RequeueWatcher:
    """Node 0's launcher, while training runs: as soon as the trainer's ``requeue.json`` of this attempt is
    committed, classify the attempt and bring the job back from inside the running job (as submitit and Lightning
    do). A teardown that hangs, or a save that ends near the time limit, then cannot turn into a final TIMEOUT:
    SLURM never requeues a timed-out job by itself. The same at the time limit's SIGTERM when the warning never
    came: SLURM's SIGKILL follows KillWait later, so the run comes back from the newest checkpoint at once. The
    batch shell's ``end`` only records what happened."""

    def __init__(self, spec: JobSpec, node: NodeContext, *, every: float = 1.0):
        self.spec, self.node, self.every = spec, node, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="requeue-watcher", daemon=True)

    def start(self) -> "RequeueWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        """After the training processes exited: one last look (the marker may have come since the last poll)."""
        self._stop.set()
        self._thread.join()
        self.check()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self.check():
                return

    def check(self) -> bool:
        """True once there is nothing left to do (the attempt is closed, or SLURM handles it)."""
        folder = command.attempt_dir(self.spec, self.node)
        record = runfolder.read_json(folder / "attempt.json")
        if record is None or record.get("outcome") is not None or (folder / "requeue.lock").exists():
            return record is not None
        if runfolder.read_marker(Path(self.spec.job_dir), attempts.CANCEL_MARKER, record["started"]) is not None:
            # `submit.py cancel`: record it now, SLURM kills the batch shell KillWait after its SIGTERM and may
            # not leave ``end`` the time (end refines this record if it runs).
            outcome = attempts.classify(gather(self.spec, folder, self.node.num_nodes, 0, "TERM", job_info={}))
            record["outcome"] = attempts.outcome_dict(outcome)
            runfolder.write_json_atomic(folder / "attempt.json", record)
            return True
        marker = runfolder.read_marker(Path(self.spec.output_dir), runfolder.REQUEUE_MARKER, record["started"])
        saved = marker is not None and marker.get("attempt") in (None, self.node.attempt_id)
        own = runfolder.read_json(folder / f"node{self.node.node_rank}.json") or {}
        # SIGTERM reached this step: SLURM itself ends the attempt (scontrol requeue, preemption, scancel, or the
        # time limit, which SLURM never requeues: then the run comes back from here, saved or not).
        terminated = any(s["name"] == "TERM" for s in own.get("signals", []))
        if not saved and not terminated:
            return False
        job_info = attempts.scontrol_job(self.node.job_id)
        if terminated and not job_info:  # which SIGTERM it was, only SLURM can say: ask again at the next look
            return False
        outcome = attempts.classify(gather(self.spec, folder, self.node.num_nodes, 0, "TERM" if terminated else "",
                                           job_info=job_info, restart_count=self.node.restart_count))
        if outcome.requeue:
            close(self.spec, self.node, outcome, job_info, requeue=attempts.requeue, by="node 0's launcher")
            return True
        return saved  # terminated before the save committed: it may still commit before SLURM's SIGKILL
