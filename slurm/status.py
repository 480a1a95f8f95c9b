"""Day-to-day commands on a job folder: status (SLURM state, every attempt and its outcome, latest checkpoint),
log paths, cancel. Everything comes from the job folder plus squeue/scontrol; no accounting database needed.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Optional

from easyanimate import runfolder
from slurm import attempts
from slurm import spec as specs

ERROR_LINES = 6


# SLURM states in which a job of the folder may still start or run an attempt.
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT")
UNRECORDED = "unrecorded"


def job_ids(job_dir: Path) -> list[str]:
    listed = [j["job_id"] for j in attempts.submitted_jobs(job_dir)]
    seen = [p.name.partition(".")[0] for p in attempts.attempt_dirs(job_dir)]
    return list(dict.fromkeys(listed + seen))


def sacct_job(job_id: str) -> dict[str, str]:
    """The job's allocation line from accounting (``sacct``), for jobs slurmctld has forgotten (MinJobAge);
    empty when accounting is off or does not know the job."""
    try:
        done = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,NodeList,ExitCode,End"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        fields = line.split("|")
        if len(fields) == 5 and fields[0] == job_id:
            return dict(zip(("JobID", "State", "NodeList", "ExitCode", "End"), fields))
    return {}


def slurm_state(job_id: str) -> dict[str, str]:
    info = attempts.scontrol_job(job_id)
    if not info:
        old = sacct_job(job_id)
        if old:  # "CANCELLED by 0" -> "CANCELLED"
            return {"state": f"{old['State'].split()[0]} (from sacct: slurmctld no longer holds the job; ended "
                             f"{old['End']}, exit {old['ExitCode']})", "nodes": old["NodeList"]}
        return {"state": "unknown to SLURM (finished long ago, or not a SLURM job; sacct has no record)"}
    return {"state": info.get("JobState", "?"), "restarts": info.get("Restarts", "0"),
            "reason": info.get("Reason", ""), "nodes": info.get("NodeList", "")}


def log_paths(job_dir: Path) -> list[Path]:
    folder = job_dir / "logs"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".out", ".err")) \
        if folder.is_dir() else []


def error_excerpt(job_dir: Path, job_id: str, detail: str) -> list[str]:
    """The exception lines of the failing node's stderr (the trainer's traceback ends with one), for crashes."""
    match = re.search(r"node (\d+)", detail)
    path = job_dir / "logs" / f"{job_id}_{match.group(1) if match else 0}_log.err"
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    errors = [line.strip() for line in lines if re.search(r"\b\w*(Error|Exception)\b.*:", line)]
    return list(dict.fromkeys(errors))[-ERROR_LINES:]


def status(job_dir: Path) -> dict:
    job_dir = Path(job_dir)
    spec = specs.read(job_dir / "job.json")
    local = {j["job_id"] for j in attempts.submitted_jobs(job_dir) if j.get("local")}
    jobs = {job_id: {"state": "local run (submitit)"} if job_id in local else slurm_state(job_id)
            for job_id in job_ids(job_dir)}
    folders = attempts.attempt_dirs(job_dir)
    newest = {folder.name.partition(".")[0]: folder for folder in folders}  # each job's latest attempt
    rows = []
    for folder in folders:
        record = runfolder.read_json(folder / "attempt.json") or {}
        outcome = record.get("outcome") or {}
        row = {"attempt": folder.name, "started": record.get("started"), "ended": outcome.get("ended"),
               "resume_from": (record.get("resume_from") or {}).get("step"),
               "outcome": outcome.get("kind", "running"), "detail": outcome.get("detail", ""),
               "requeued": outcome.get("requeue", False), "step": outcome.get("step"),
               "save_latency_s": outcome.get("save_latency_s"),
               "world_size": record.get("world_size") or (record.get("num_nodes") or 0) * spec.procs_per_node or None,
               "nodes": record.get("num_nodes")}
        job_id = folder.name.partition(".")[0]
        state = jobs.get(job_id, {}).get("state", "?")
        if not outcome and (newest[job_id] != folder or
                            (job_id not in local and state.split()[0] not in ACTIVE_STATES)):
            # Killed before it could record an outcome (a cancel's SIGKILL, a lost node): not running any more.
            row |= {"outcome": UNRECORDED, "detail": f"ended without recording an outcome (SLURM: {state})"}
        if row["outcome"] == attempts.CRASHED:
            row["error"] = error_excerpt(job_dir, job_id, row["detail"])
        rows.append(row)
    output = Path(spec.output_dir)
    return {
        "job_dir": str(job_dir), "name": spec.name, "output_dir": str(output),
        "jobs": jobs,
        "attempts": rows,
        "latest_checkpoint": runfolder.latest_checkpoint(output),
        "markers": {name: runfolder.read_json(output / name)
                    for name in (runfolder.REQUEUE_MARKER, runfolder.COMPLETE_MARKER)},
        "logs": [str(p) for p in log_paths(job_dir)],
        "training": training_progress(job_dir, output, spec.name),
    }


def training_progress(job_dir: Path, output: Path, name: str) -> dict:
    """The last logged step, loss, speed and ETA, and the curves drawn into JOB_DIR/curves.png."""
    try:
        from easyanimate import curves
    except ImportError as error:  # a login node without the package's dependencies
        return {"summary": f"curves unavailable: {error}", "png": None}
    line, png = curves.report(output, job_dir / curves.PNG_NAME, name)
    return {"summary": line, "png": str(png) if png else None}


def _clock(t: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def format_status(s: dict) -> str:
    lines = [f"job {s['name']!r} in {s['job_dir']}"]
    for job_id, state in s["jobs"].items():
        extra = f", restarts {state['restarts']}" if "restarts" in state else ""
        lines.append(f"  job {job_id}: {state['state']}{extra}")
    lines.append("  attempts:")
    for row in s["attempts"]:
        took = f"{row['ended'] - row['started']:.0f}s" if row["ended"] and row["started"] else "-"
        save = f", save {row['save_latency_s']:.1f}s" if row["save_latency_s"] is not None else ""
        resume = f"from step {row['resume_from']}" if row["resume_from"] is not None else "from scratch"
        world = f"{row['nodes']}n/{row['world_size']}p" if row.get("world_size") else "-"
        lines.append(f"    {row['attempt']:<10} {_clock(row['started'])} {took:>6}  {world:>8}  {resume:<16} "
                     f"{row['outcome']:<16} {row['detail']}{save}{' -> requeued' if row['requeued'] else ''}")
        lines += [f"        | {line}" for line in row.get("error", [])]
    ckpt = s["latest_checkpoint"]
    lines.append(f"  latest checkpoint: {'step %d (%s)' % (ckpt['step'], ckpt['path']) if ckpt else 'none'}")
    done = s["markers"].get(runfolder.COMPLETE_MARKER)
    if done:
        lines.append(f"  training complete at step {done.get('step')}")
    lines.append(f"  training: {s['training']['summary']}")
    if s["training"]["png"]:
        lines.append(f"  curves: {s['training']['png']}")
    lines.append(f"  logs: {Path(s['job_dir']) / 'logs'} ({len(s['logs'])} files; `submit.py logs` lists them)")
    return "\n".join(lines) + "\n"


def cancel(job_dir: Path) -> list[str]:
    """scancel every job of this folder that SLURM still knows; the attempt is then recorded as cancelled."""
    cancelled = []
    runfolder.write_json_atomic(Path(job_dir) / attempts.CANCEL_MARKER, {"time": time.time()})
    for job_id in job_ids(Path(job_dir)):
        state = attempts.scontrol_job(job_id).get("JobState")
        if state in ("PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "CONFIGURING", "REQUEUE_HOLD"):
            subprocess.run(["scancel", job_id], check=True, timeout=60)
            cancelled.append(job_id)
    return cancelled
