"""Attempt accounting: every run of a job (first start and each requeue) is an attempt with a recorded outcome —
completed, preempted, timed_out, crashed, node_failure, cancelled or budget_exhausted — and its own retry budget.

The evidence is ours, not guessed from elapsed time: the trainer's markers in the run folder (``requeue.json``
after a signal-triggered save committed on every rank, ``complete.json`` at the last step), what each node's
launcher saw (signals, exit code), whether the batch shell got SIGTERM (then SLURM itself is ending the attempt),
and SLURM's own view (``scontrol show job``: PreemptTime, EndTime, Restarts, and ``Reason=TimeLimit`` at the SIGTERM
of the time limit, the one ending SLURM never requeues by itself). A crash is never requeued, nor a time-out that
committed nothing new (the next attempt would end the same way).
Standard library only.
"""

from __future__ import annotations

import os
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
    slurm_requeued: bool = False                       # SLURM already requeued the job (node failure, requeue)
    time_limit: bool = False                           # SLURM ends the attempt at its time limit (Reason=TimeLimit)
    resumed_step: int = 0                              # the checkpoint this attempt started from (0: scratch)
    committed: Optional[dict] = None                   # the newest committed checkpoint now ({"step", "path"})

    @property
    def slurm_ends_it(self) -> bool:
        """SLURM itself is ending this attempt (SIGTERM to the batch shell) and brings it back or means it to end
        (scontrol requeue, preemption, scancel), or has requeued it already: we never requeue on top. Not at the
        time limit: SLURM ends a timed-out job for good."""
        return (self.batch_signal == "TERM" and not self.time_limit) or self.slurm_requeued

    @property
    def progressed(self) -> bool:
        """A checkpoint newer than the one this attempt resumed from is committed: another attempt gets further."""
        steps = [c["step"] for c in (self.committed, self.requeue_marker) if c and c.get("step") is not None]
        return max(steps, default=0) > self.resumed_step


def _first_signal(nodes: list[dict]) -> Optional[dict]:
    received = [s for node in nodes for s in node.get("signals", [])]
    return min(received, key=lambda s: s["time"]) if received else None


def _interruption(ev: Evidence, signal_time: float) -> tuple[str, str]:
    """(kind, why) of an interruption signalled at ``signal_time``."""
    if ev.preempt_time:
        return PREEMPTED, "SLURM preempted the job for a higher-priority one"
    if ev.time_limit:
        return TIMED_OUT, "SLURM ended the job at its time limit"
    if ev.end_time is not None and ev.end_time - signal_time <= ev.signal_lead_s + TIMEOUT_SLACK_S:
        return TIMED_OUT, f"signal {ev.end_time - signal_time:.0f}s before the time limit"
    return PREEMPTED, "signal well before the time limit (scancel --signal, scontrol requeue, an admin)"


NO_PROGRESS = ("nothing newer than the checkpoint this attempt resumed from was committed: not requeued (the next "
               "attempt would end the same way; raise --time or --signal-lead-s, or save more often)")


def _timed_out_unsaved(ev: Evidence) -> Outcome:
    """SIGTERM of the time limit and no signal save committed: the warning never reached the trainer, or its save
    did not fit in KillWait. The run comes back from the newest checkpoint if this attempt committed one (SLURM
    will not requeue a timed-out job itself)."""
    why = "SIGTERM at the time limit before a signal-triggered save committed (no warning, or the save did not fit)"
    if not ev.progressed:
        return Outcome(TIMED_OUT, f"{why}; {NO_PROGRESS}")
    step, path = ev.committed["step"], ev.committed["path"]
    return Outcome(TIMED_OUT, f"{why}; resumes from checkpoint {step}, committed during this attempt",
                   requeue=True, step=step, checkpoint=path)


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
        if ev.slurm_ends_it:
            return Outcome(kind, f"{saved}; SLURM itself is ending this attempt and requeues it unless it was "
                           "cancelled", **common)
        if kind == TIMED_OUT and not ev.progressed:
            return Outcome(kind, f"{saved}; {NO_PROGRESS}", **common)
        return Outcome(kind, saved, requeue=True, **common)
    if ev.time_limit:
        return _timed_out_unsaved(ev)
    # A node that neither exited nor heard a signal died without being told (a node killed after SLURM's
    # KillWait still recorded the signal that preceded it); the other nodes' errors follow from losing a peer.
    reported = {n["node_rank"]: n for n in ev.nodes}
    silent = [r for r in range(ev.expected_nodes)
              if r not in reported or ("exit_code" not in reported[r] and not reported[r].get("signals"))]
    if silent:
        by = "; SLURM requeues it itself" if ev.slurm_ends_it else ""
        return Outcome(NODE_FAILURE, f"node(s) {silent} never reported an exit: died or lost{by}",
                       requeue=not ev.slurm_ends_it)
    finished = [n for n in ev.nodes if "exit_code" in n]
    crashed = [n for n in finished if n["exit_code"] != 0 and not n.get("signals")]
    if crashed:
        n = crashed[0]
        return Outcome(CRASHED, f"node {n['node_rank']} ({n.get('hostname')}) exited {n['exit_code']} without "
                       "a preemption signal; not requeued (see its log)")
    if first is not None:
        kind, why = _interruption(ev, first["time"])
        if ev.batch_signal == "TERM":
            return Outcome(CANCELLED if kind == PREEMPTED and not ev.preempt_time else kind,
                           f"{first['name']} ({why}), then SIGTERM from SLURM before a checkpoint committed")
        # The training processes ended on their own after the signal, yet no requeue.json: the save itself failed
        # (out of memory, disk full, a bug). Requeuing would repeat it from an older checkpoint, forever.
        return Outcome(CRASHED, f"{first['name']} ({why}), then training ended without committing its save "
                       "(no requeue.json): the save failed; not requeued (see the log)")
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

def _scontrol_show(entity: str, name: str) -> dict[str, str]:
    """``scontrol show ENTITY -o NAME`` as a dict (empty when SLURM does not know it, or is absent)."""
    try:
        out = subprocess.run(["scontrol", "show", entity, "-o", name], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", out))


def scontrol_job(job_id: str) -> dict[str, str]:
    return _scontrol_show("job", job_id)


def slurm_time(value: Optional[str]) -> Optional[float]:
    if not value or value in ("None", "Unknown"):
        return None
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


# States in which SLURM has already put the job back in the queue (after a node failure, scontrol requeue, ...).
SLURM_REQUEUED_STATES = ("PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "NODE_FAIL")


def slurm_requeued(job_info: dict[str, str], restart_count: int) -> bool:
    """SLURM has requeued this job since the attempt ``restart_count`` started."""
    restarts = job_info.get("Restarts", "0")
    return (restarts.isdigit() and int(restarts) > restart_count) or job_info.get("JobState") in SLURM_REQUEUED_STATES


def at_time_limit(job_info: dict[str, str], restart_count: int) -> bool:
    """SLURM is ending the attempt ``restart_count`` at its time limit. Measured on Slurm 22.05 at the SIGTERM:
    the time limit reads JobState=COMPLETING Reason=TimeLimit (TIMEOUT once done), Restarts unchanged; scancel
    COMPLETING Reason=None; scontrol requeue and preemption have Restarts already raised."""
    return (job_info.get("Reason") == "TimeLimit" or job_info.get("JobState") == "TIMEOUT") and \
        not slurm_requeued(job_info, restart_count)


def partition_info(partition: Optional[str]) -> dict[str, str]:
    return _scontrol_show("partition", partition) if partition else {}


def preempt_mode(partition: Optional[str]) -> str:
    """The partition's PreemptMode, upper case ("" when SLURM does not say): REQUEUE puts preempted jobs back in
    the queue itself, CANCEL ends them for good."""
    return partition_info(partition).get("PreemptMode", "").upper()


def cancels_preempted(partition: Optional[str]) -> bool:
    """The partition ends preempted jobs for good (PreemptMode=CANCEL) instead of requeuing them."""
    return preempt_mode(partition).startswith("CANCEL")


def take_requeue(attempt: Path) -> bool:
    """Exactly one process (node 0's launcher or the batch shell) brings an attempt back: the first to create
    the attempt's ``requeue.lock``."""
    try:
        os.close(os.open(Path(attempt) / "requeue.lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return True
    except FileExistsError:
        return False


def requeue(job_id: str) -> Optional[str]:
    """Ask SLURM to requeue the job; returns an error message or None."""
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()


def submission_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment for sbatch run from inside a job: without the job's own SLURM_* (sbatch would take some
    of them as options), keeping SLURM_CONF."""
    return {k: v for k, v in environ.items()
            if not k.startswith(("SLURM_", "SRUN_", "SBATCH_")) or k == "SLURM_CONF"}


def resubmit(job_dir: Path, job_id: str, *, cwd: str) -> str:
    """A new job for the same job folder (same script, same spec, same budgets); returns its id."""
    done = subprocess.run(["sbatch", "--parsable", str(Path(job_dir) / "submission.sbatch")], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=submission_env(dict(os.environ)))
    if done.returncode != 0:
        raise RuntimeError(f"sbatch refused the resubmission: {(done.stderr or done.stdout).strip()}")
    new_id = done.stdout.strip().split(";")[0]
    record_job(Path(job_dir), new_id, local=False, resubmit_of=job_id)
    return new_id


def submitted_jobs(job_dir: Path) -> list[dict]:
    return (runfolder.read_json(Path(job_dir) / "jobs.json") or {}).get("jobs", [])


def record_job(job_dir: Path, job_id: str, *, local: bool, resubmit_of: Optional[str] = None) -> None:
    """job_dir/jobs.json lists every job submitted for this folder (status reads it); a resubmission names the
    job it continues."""
    entry = {"job_id": job_id, "local": local, "submitted": time.time()}
    if resubmit_of is not None:
        entry["resubmit_of"] = resubmit_of
    runfolder.write_json_atomic(Path(job_dir) / "jobs.json", {"jobs": [*submitted_jobs(job_dir), entry]})


def lineage(job_dir: Path, job_id: str) -> set[str]:
    """This job and the jobs it was resubmitted for: one run, one set of retry budgets."""
    parents = {j["job_id"]: j.get("resubmit_of") for j in submitted_jobs(job_dir)}
    chain = {job_id}
    while parents.get(job_id) and parents[job_id] not in chain:
        job_id = parents[job_id]
        chain.add(job_id)
    return chain


def outcome_dict(outcome: Outcome) -> dict:
    return {**asdict(outcome), "ended": time.time()}
