"""Secrets of a job (``--env WANDB_API_KEY``, ``-- --hub_token=...``) live in one file only its owner can read,
``JOB_DIR/secrets.json`` (0600): the spec that is printed, embedded in the sbatch script and written to job.json
carries ``<redacted>`` in their place, and each node puts the real values back when it reads the spec.
Standard library only.
"""

from __future__ import annotations

import copy
from pathlib import Path

from easyanimate import redact, runfolder
from slurm.spec import JobSpec

FILE = "secrets.json"


def split(spec: JobSpec) -> tuple[JobSpec, dict]:
    """(the spec with secrets redacted, the secrets) — what may be shown, and what must not."""
    shown = copy.deepcopy(spec)
    shown.env = redact.mapping(spec.env)
    shown.train_args = redact.argv(spec.train_args)
    hidden = {"env": {k: v for k, v in spec.env.items() if shown.env[k] != v},
              "train_args": {str(i): a for i, (a, b) in enumerate(zip(spec.train_args, shown.train_args)) if a != b}}
    return shown, hidden


def shown(spec: JobSpec) -> JobSpec:
    return split(spec)[0]


def write(spec: JobSpec) -> Path | None:
    """JOB_DIR/secrets.json (0600) when the job has secrets; a stale one is removed."""
    path = Path(spec.job_dir) / FILE
    hidden = split(spec)[1]
    if not hidden["env"] and not hidden["train_args"]:
        path.unlink(missing_ok=True)
        return None
    return runfolder.write_json_atomic(path, hidden, mode=0o600)


def reveal(spec: JobSpec) -> JobSpec:
    """On a node: the spec read from job.json with the secrets put back."""
    hidden = runfolder.read_json(Path(spec.job_dir) / FILE)
    if not hidden:
        return spec
    spec.env = {**spec.env, **hidden.get("env", {})}
    args = list(spec.train_args)
    for index, value in hidden.get("train_args", {}).items():
        if int(index) < len(args) and redact.REDACTED in args[int(index)]:
            args[int(index)] = value
    spec.train_args = args
    return spec
