"""The sbatch script of a job spec, in submitit's conventions (sorted ``#SBATCH`` lines, shell-quoted values,
``--open-mode=append`` so logs survive requeues, per-task srun logs) but with our own body: no pickle, and
relative paths stay relative so the templates work from any checkout.

One function renders what ``submit.py`` submits, what ``--dry-run`` prints and ``slurm/templates/*.sbatch``.
The resolved spec travels inside the script as JSON in a quoted heredoc: no shell expansion, so job names,
paths and prompts reach the nodes byte for byte.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from slurm import resources, secrets
from slurm import spec as specs
from slurm.spec import JobSpec

HEREDOC = "EASYANIMATE_JOB_SPEC"
LAUNCH = "slurm/launch.py"


def sbatch_flag(key: str, value: object) -> str:
    """One directive: ``#SBATCH --key=value`` with the value shell-quoted, ``True`` as a bare flag."""
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def log_folder(spec: JobSpec) -> Path:
    return Path(spec.job_dir) / "logs"


def _log_pattern(spec: JobSpec, pattern: str) -> str:
    # sbatch expands %j, %t, ... in --output/--error; a literal % in the folder name must be written %%.
    return str(log_folder(spec)).replace("%", "%%") + "/" + pattern


def _launch(spec: JobSpec, step: str, *extra: str) -> str:
    return " ".join([shlex.quote(spec.python), LAUNCH, step, '"$JOB_DIR/job.json"', *extra])


def setup_lines(spec: JobSpec) -> list[str]:
    site = ["# site setup (--setup)", *spec.setup] if spec.setup else []
    return [*site,
        f"JOB_DIR={shlex.quote(spec.job_dir)}",
        'mkdir -p "$JOB_DIR"',
        f"cat > \"$JOB_DIR/job.json\" <<'{HEREDOC}'",
        *specs.to_json(secrets.shown(spec)).splitlines(),  # secrets: JOB_DIR/secrets.json (0600) only
        HEREDOC,
        "# SIGTERM here means SLURM itself ends this attempt (scontrol requeue, preemption, scancel, time limit):",
        "# note it and let the steps finish their save. The launcher asks SLURM which: a time limit it never requeues.",
        "trap 'batch_signal=TERM' TERM",
        "# Slurm 22.05-23.02 do not pass the job's --cpus-per-task on to srun; whole-node jobs own every core.",
        'export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-$SLURM_CPUS_ON_NODE}"',
        _launch(spec, "begin") + " || exit $?",
    ]


def teardown_lines(spec: JobSpec) -> list[str]:
    return [
        "srun_status=$?",
        _launch(spec, "end", '--srun-status "$srun_status"', '--batch-signal "${batch_signal:-}"'),
    ]


def directives(spec: JobSpec) -> dict[str, object]:
    values = {
        "job-name": spec.name, "ntasks-per-node": 1,
        "nodes": f"{spec.nodes}-{spec.max_nodes}" if (spec.max_nodes or 0) > spec.nodes else spec.nodes,
        "cpus-per-task": spec.cpus_per_task,
        "gres": resources.gres(spec.gpus_per_node, spec.gpu_type), "mem": spec.mem, "mem-per-gpu": spec.mem_per_gpu,
        "time": spec.time, "partition": spec.partition, "account": spec.account, "qos": spec.qos,
        "constraint": spec.constraint, "exclusive": True if spec.exclusive else None,
        "chdir": None if spec.root == "." else spec.root, "reservation": spec.reservation,
        "nodelist": spec.nodelist, "exclude": spec.exclude, "mail-type": spec.mail_type,
        "mail-user": spec.mail_user, "dependency": spec.dependency,
        # No B: prefix: every process of the step gets the signal (each layer handles or ignores it).
        "signal": f"{spec.signal}@{spec.signal_lead_s}", "requeue": True, "open-mode": "append",
        "output": _log_pattern(spec, "%j_0_log.out"),
        "error": _log_pattern(spec, "%j_0_log.err"),
    }
    for item in spec.sbatch:  # --sbatch KEY=VALUE: site options we have no field for
        key, sep, value = item.partition("=")
        values[key] = value if sep else True
    return {key: value for key, value in values.items() if value is not None}


def sbatch_script(spec: JobSpec) -> str:
    specs.validate(spec)
    srun = ["srun", "--unbuffered", "--output", _log_pattern(spec, "%j_%t_log.out"),
            "--error", _log_pattern(spec, "%j_%t_log.err"), "--kill-on-bad-exit=1", *spec.srun_args]
    lines = ["#!/bin/bash", "", "# Parameters"]
    lines += [sbatch_flag(key, value) for key, value in sorted(directives(spec).items())]
    lines += ["", "# setup", *setup_lines(spec)]
    lines += ["", "# command", " ".join(shlex.quote(a) for a in srun) + " " + _launch(spec, "node")]
    lines += ["", "# teardown", *teardown_lines(spec)]
    return "\n".join(lines) + "\n"
