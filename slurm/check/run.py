"""``python slurm/submit.py check``: the preflight job, from the submitting machine's side.

The check job is the training job with its program swapped: the same spec (nodes, GPUs, partition, container,
image, NCCL profile, DeepSpeed launcher), rendered by the same code into the same kind of sbatch script, launched
by the same ``slurm/launch.py`` and ``accelerate launch``, but running ``slurm/check/probe.py`` for a few minutes.
Its job folder is ``JOB_DIR/check``; the verdicts land in ``JOB_DIR/check.json``, which ``status`` shows.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time
from pathlib import Path
from typing import Optional

from easyanimate import runfolder
from slurm import attempts, jobs, training
from slurm.check import verdicts
from slurm.check.probe import SIGNAL_REQUEST
from slurm.spec import JobSpec, time_to_seconds

PROBE = "slurm/check/probe.py"
CHECK_TIME = "00:20:00"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED")
RESULT = "check.json"


def check_dir(job_dir: str | Path) -> Path:
    return Path(job_dir) / "check"


def probe_argv(spec: JobSpec, folder: Path, *, storage_mib: int, sizes_mib: list[float]) -> list[str]:
    flags = training.explicit_flags(spec.train_args)
    argv = ["--results", str(folder / "results"), "--marker-dir", str(folder / "output"),
            "--output-dir", spec.output_dir, "--signal", spec.signal, "--storage-mib", str(storage_mib),
            "--sizes-mib", *(str(s) for s in sizes_mib)]
    if spec.data_paths:
        argv += ["--paths", *spec.data_paths]
    for flag in ("train_data_meta", "train_data_dir", "config_path"):
        if flags.get(flag):
            argv += [f"--{flag.replace('_', '-')}", str(flags[flag])]
    if flags.get("pretrained_model_name_or_path"):
        argv += ["--model", str(flags["pretrained_model_name_or_path"])]
    return argv


def check_spec(spec: JobSpec, *, storage_mib: int = 2048, sizes_mib: Optional[list[float]] = None) -> JobSpec:
    """The training spec with the probe in place of the trainer, its own job folder, a short limit and no
    requeues (a check that fails is reported, not retried)."""
    folder = check_dir(spec.job_dir)
    sizes = sizes_mib or ([1, 16, 128] if spec.gpus_per_node else [1, 8])
    binds = list(spec.binds)
    if spec.container != "none":  # the training output folder is outside the check's own folders
        binds.append(f"{Path(spec.output_dir).resolve().parent}:{Path(spec.output_dir).resolve().parent}")
    time_s = time_to_seconds(CHECK_TIME)
    return dataclasses.replace(
        spec, name=f"{spec.name}-check", job_dir=str(folder), entry=PROBE, time=CHECK_TIME,
        signal_lead_s=min(spec.signal_lead_s, time_s // 2), max_preemptions=0, max_timeouts=0,
        max_node_failures=0, output_dir=str(folder / "output"), binds=binds,
        train_args=probe_argv(spec, folder, storage_mib=storage_mib, sizes_mib=sizes))


def partition_facts(name: Optional[str]) -> dict:
    """PreemptMode and GraceTime of the job's partition (the default one when none is named), and whether
    preemption sends the user's signal (SlurmctldParameters=preempt_send_user_signal)."""
    out = _scontrol("show", "partition", "-o", *([name] if name else []))
    lines = [line for line in out.splitlines() if line.strip()]
    line = next((line for line in lines if name or "Default=YES" in line), lines[0] if lines else "")
    found = dict(re.findall(r"(\w+)=(\S*)", line))
    if not found:
        return {}
    config = _scontrol("show", "config")
    return {"PartitionName": found.get("PartitionName"), "PreemptMode": found.get("PreemptMode", "?"),
            "GraceTime": int(found.get("GraceTime", "0")),
            "preempt_send_user_signal": "preempt_send_user_signal" in config}


def _scontrol(*argv: str) -> str:
    try:
        return subprocess.run(["scontrol", *argv], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def job_facts(spec: JobSpec) -> dict:
    """What the training job asks for, as the verdicts compare it with what the nodes report."""
    return {"nodes": spec.nodes, "gpus_per_node": spec.gpus_per_node, "procs_per_node": spec.procs_per_node,
            "cpus_per_task": spec.cpus_per_task, "mem": spec.mem, "container": spec.container,
            "deepspeed": spec.deepspeed, "signal_lead_s": spec.signal_lead_s}


def submit(spec: JobSpec, **options) -> str:
    """Submit the check job for ``spec`` (the training job); returns its job id."""
    probe = check_spec(spec, **options)
    runfolder.write_json_atomic(check_dir(spec.job_dir) / "asked.json", {
        "job": job_facts(spec), "partition": partition_facts(spec.partition), "time": time.time()})
    (check_dir(spec.job_dir) / RESULT).unlink(missing_ok=True)
    (Path(spec.job_dir) / RESULT).unlink(missing_ok=True)
    return jobs.sbatch_job(probe)


def wait(job_dir: str | Path, job_id: str, *, timeout_s: float = 1800, poll_s: float = 2.0) -> str:
    """Until the check job ends; meanwhile send the warning signal when the probe asks for it (an image without
    SLURM's tools cannot send it itself). Returns SLURM's final state."""
    request = check_dir(job_dir) / "results" / SIGNAL_REQUEST
    served = False
    deadline = time.monotonic() + timeout_s
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        if not served and request.is_file():
            asked = runfolder.read_json(request) or {}
            subprocess.run(["scancel", f"--signal={asked.get('signal', 'USR2')}", job_id], capture_output=True,
                           timeout=60)
            served = True
        state = attempts.scontrol_job(job_id).get("JobState", "UNKNOWN")
        if state in ENDED or state == "UNKNOWN":
            return state
        time.sleep(poll_s)
    return state


def gather_facts(job_dir: str | Path) -> dict:
    """Everything the verdicts read, from the check's job folder."""
    folder = check_dir(job_dir)
    asked = runfolder.read_json(folder / "asked.json") or {}
    facts = runfolder.read_json(folder / "results" / "facts.json") or {}
    facts["job"] = asked["job"]
    facts["partition"] = asked.get("partition") or {}
    last = attempts.attempt_dirs(folder)[-1:]
    facts["node_chains"] = [{"host": r.get("hostname"), "exit_code": r.get("exit_code")}
                            for a in last for r in attempts.node_records(a)]
    facts["outcome"] = next(((runfolder.read_json(a / "attempt.json") or {}).get("outcome") for a in last), None)
    facts["params"] = (facts.get("model") or {}).get("params")
    return facts


def finished(job_dir: str | Path) -> bool:
    """The check job's attempt has recorded its outcome (``--no-wait`` users come back through ``status``)."""
    last = attempts.attempt_dirs(check_dir(job_dir))[-1:]
    return any((runfolder.read_json(a / "attempt.json") or {}).get("outcome") for a in last)


def collect(job_dir: str | Path) -> tuple[str, list[verdicts.Row]]:
    """Evaluate the finished check job, write ``JOB_DIR/check.json`` (private: it lists paths and variables)
    and return the table."""
    rows = verdicts.evaluate(gather_facts(job_dir))
    runfolder.write_json_atomic(Path(job_dir) / RESULT, {"time": time.time(), "overall": verdicts.overall(rows),
                                                         "rows": verdicts.as_json(rows)}, mode=0o600)
    return verdicts.table(rows), rows


def summary(job_dir: str | Path) -> Optional[str]:
    """For ``status``: the saved verdicts, or a note that a check is still running."""
    saved = runfolder.read_json(Path(job_dir) / RESULT)
    if saved is None and not (check_dir(job_dir) / "asked.json").is_file():
        return None
    if saved is None:
        if not finished(job_dir):
            return "preflight check: running, no verdicts yet"
        collect(job_dir)
        saved = runfolder.read_json(Path(job_dir) / RESULT)
    rows = [verdicts.Row(**row) for row in saved["rows"]]
    flagged = [r for r in rows if r.status in (verdicts.FAIL, verdicts.WARN)]
    return (f"preflight check: {saved['overall']}" +
            ("".join(f"\n  {r.status} {r.area}: {r.check}: {r.value}" for r in flagged)))
