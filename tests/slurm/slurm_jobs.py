"""Helpers for tests that submit real jobs to the test cluster: submit through the library, wait, interrupt."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Callable

from easyanimate import runfolder
from slurm import attempts, jobs, status
from slurm.spec import JobSpec

REPO = Path(__file__).resolve().parents[2]
STANDIN = "tests/slurm/standin_trainer.py"


def standin_options(job_dir: Path, **options) -> dict:
    return {"name": "standin", "job_dir": str(job_dir), "nodes": 2, "gpus_per_node": 0, "container": "none",
            "mixed_precision": "no", "entry": STANDIN, "time": "10:00", "signal_lead_s": 60,
            "collective_timeout_min": 3, **options}


def submit(options: dict, extra: list[str], *, job_file: str | None = None, cwd: Path = REPO) -> tuple[JobSpec, str]:
    spec = jobs.build_spec(dict(options), job_file=job_file, extra=extra, cwd=cwd)
    return spec, jobs.submit(spec)


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def slurm_state(job_id: str) -> str:
    return attempts.scontrol_job(job_id).get("JobState", "")


def wait_finished(job_id: str, timeout: float) -> str:
    return wait_for(lambda: (s := slurm_state(job_id)) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                           "NODE_FAIL", "OUT_OF_MEMORY") and s,
                    timeout, f"job {job_id} to finish")


def outcomes(job_dir: Path) -> list[dict]:
    return [(runfolder.read_json(p / "attempt.json") or {}).get("outcome") or {}
            for p in attempts.attempt_dirs(job_dir)]


def attempt_records(job_dir: Path) -> list[dict]:
    return [runfolder.read_json(p / "attempt.json") or {} for p in attempts.attempt_dirs(job_dir)]


def running_attempt(job_dir: Path, n: int) -> bool:
    """The n-th attempt (0-based) has started and not ended."""
    records = attempt_records(job_dir)
    return len(records) > n and records[n].get("outcome") is None


def trained_step(output: Path) -> int:
    """Last optimizer step rank 0 logged (the real trainer's metrics.jsonl)."""
    try:
        lines = (output / "logs" / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return json.loads(lines[-1])["step"] if lines else 0


def status_text(job_dir: Path) -> str:
    return status.format_status(status.status(job_dir))


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)
