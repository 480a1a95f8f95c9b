"""Submitting a job: spec from job file + flags, dry run, sbatch submission, or the same job on this machine
through submitit's LocalExecutor. ``submit.py`` is a thin CLI over these functions; tests call them directly.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from easyanimate import runfolder
from slurm import attempts, command, render, training
from slurm import spec as specs
from slurm.command import NodeContext
from slurm.spec import JobSpec, SpecError

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
SAVE_MARGIN_S = 60


def build_spec(options: dict[str, Any], *, job_file: str | None = None, extra: list[str] = (),
               cwd: Path | None = None, template: bool = False) -> JobSpec:
    """Job file, then command-line options over it; resolved and validated. ``template=True`` keeps every path
    relative to the directory sbatch will run in (the repository root), for slurm/templates/."""
    values = specs.load_job_file(job_file) if job_file else {}
    env = {**values.pop("env", {}), **options.pop("env", {})}
    binds = list(values.pop("binds", [])) + list(options.pop("binds", []))
    values.update(options)
    spec = specs.from_mapping({**values, "env": env, "binds": binds}, source=job_file or "options")
    cwd = None if template else Path(cwd or os.getcwd()).resolve()
    if spec.job_dir is None:
        spec.job_dir = f"runs/{_folder_name(spec.name)}"
    if template:
        spec.root, spec.python = ".", "python3"
        spec.train_python = "python"
    else:
        spec.job_dir = str((cwd / spec.job_dir).resolve())
        spec.root, spec.python = str(REPO), sys.executable
        spec.train_python = "python" if spec.container == "apptainer" else sys.executable
        if spec.image:
            spec.image = str((cwd / spec.image).resolve())
    training.resolve(spec, list(extra), cwd=cwd)
    specs.validate(spec)
    if spec.container == "apptainer":
        for bind in command.binds(spec):
            if bind.count(":") > 2 or "," in bind:
                raise SpecError(f"apptainer bind {bind!r}: paths with ',' or ':' cannot be bound; rename or "
                                "symlink the folder.")
    return spec


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "job"


# --- warnings ------------------------------------------------------------------------------------------------

def measured_save_s(job_dir: Path) -> float | None:
    """Longest signal-to-commit time recorded by earlier attempts in this job folder."""
    seen = []
    for folder in attempts.attempt_dirs(job_dir):
        outcome = (runfolder.read_json(folder / "attempt.json") or {}).get("outcome") or {}
        if outcome.get("save_latency_s") is not None:
            seen.append(outcome["save_latency_s"])
    return max(seen) if seen else None


def partition_grace_s(partition: str | None) -> int | None:
    if not partition:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "partition", "-o", partition], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bGraceTime=(\d+)", out)
    return int(match.group(1)) if match else None


def lead_time_warnings(spec: JobSpec, measured: float | None, grace: int | None) -> list[str]:
    """The signal must leave time for the step in flight plus a save (NeMo's "one step + save" rule)."""
    if measured is None:
        return [f"signal lead time {spec.signal_lead_s}s: no save time measured yet for this job folder; it must "
                "cover one training step plus one checkpoint save (status shows the measured time after the "
                "first interruption)."]
    need = measured + SAVE_MARGIN_S
    found = []
    if spec.signal_lead_s < need:
        found.append(f"--signal-lead-s {spec.signal_lead_s} is shorter than the measured step+save "
                     f"{measured:.0f}s plus {SAVE_MARGIN_S}s margin: raise it to at least {math.ceil(need)}.")
    if grace is not None and 0 < grace < need:
        found.append(f"partition {spec.partition} gives preempted jobs GraceTime={grace}s, less than the "
                     f"measured step+save {measured:.0f}s plus margin: a preemption will lose the save.")
    return found


# --- dry run and submission ----------------------------------------------------------------------------------

def example_node(spec: JobSpec, node_rank: int = 0) -> NodeContext:
    """The node context a dry run shows: the values a real job fills in at run time, as placeholders."""
    return NodeContext(job_id="<job id>", num_nodes=spec.nodes, node_rank=node_rank,
                       master_addr="<first host of SLURM_JOB_NODELIST>",
                       master_port="<20000 + job id % 10000>", restart_count=0)


def node_command_text(spec: JobSpec, node_rank: int = 0) -> str:
    return shlex.join(command.node_argv(spec, example_node(spec, node_rank)))


def dry_run_text(spec: JobSpec, warnings: list[str] = ()) -> str:
    env = command.node_env(spec, example_node(spec))
    lines = [f"# ---- sbatch script ({Path(spec.job_dir) / 'submission.sbatch'}) ----", render.sbatch_script(spec),
             f"# ---- per-node launch command (node 0 of {spec.nodes}; node i passes --machine_rank i) ----",
             node_command_text(spec), "",
             f"# ---- training environment (NCCL profile {spec.nccl!r}; logged again inside the container) ----",
             *(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))]
    lines += [f"# warning: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def template_text(job_file: str | Path, image: str = "easyanimate.sif") -> str:
    """slurm/templates/NAME.sbatch for a job file: the same renderer, paths relative to the repository root."""
    return render.sbatch_script(build_spec({"image": image}, job_file=str(job_file), template=True))


def submit(spec: JobSpec) -> str:
    """Write the job folder and sbatch the script; returns the job id."""
    job_dir = Path(spec.job_dir)
    render.log_folder(spec).mkdir(parents=True, exist_ok=True)  # sbatch opens --output before the script runs
    (job_dir / "job.json").write_text(specs.to_json(spec))
    script = job_dir / "submission.sbatch"
    script.write_text(render.sbatch_script(spec))
    done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, cwd=spec.root)
    if done.returncode != 0:
        raise SpecError(f"sbatch refused the job: {done.stderr.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    _record_job(job_dir, job_id, local=False)
    return job_id


def _record_job(job_dir: Path, job_id: str, *, local: bool) -> None:
    """job_dir/jobs.json lists every job submitted from this folder (status reads it)."""
    known = (runfolder.read_json(job_dir / "jobs.json") or {}).get("jobs", [])
    runfolder.write_json_atomic(job_dir / "jobs.json", {"jobs": [*known, {"job_id": job_id, "local": local,
                                                                  "submitted": time.time()}]})


# --- the same job on this machine ----------------------------------------------------------------------------

class LocalJob:
    """One attempt per call, inside submitit's local executor; exit code 144 asks submitit to run it again."""

    def __init__(self, spec: JobSpec):
        self.spec = spec

    def __call__(self) -> dict:
        import submitit
        from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

        from slurm import launch

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                            format="%(asctime)s [launch local] %(levelname)s %(message)s")
        job_id = submitit.JobEnvironment().job_id
        restart = sum(1 for p in attempts.attempt_dirs(Path(self.spec.job_dir)) if p.name.startswith(f"{job_id}."))
        node = NodeContext(job_id=job_id, num_nodes=1, node_rank=0, master_addr="127.0.0.1",
                           master_port=str(command.master_port(job_id)), restart_count=restart)
        if launch.begin(self.spec, node) != 0:
            raise RuntimeError(f"attempt {node.attempt_id} refused: retry budget exhausted (see status)")
        status = launch.run_node(self.spec, node, forward_signals=True)
        code, outcome = launch.end(self.spec, node, status, "", requeue=lambda _job: None)
        if outcome["requeue"]:
            sys.exit(LOCAL_REQUEUE_RETURN_CODE)
        if code != 0:
            raise RuntimeError(f"attempt {node.attempt_id}: {outcome['kind']}: {outcome['detail']}")
        return outcome


def run_local(spec: JobSpec) -> dict:
    """Run the job on this machine (one node) and wait for it; returns the final outcome."""
    import submitit

    if spec.nodes != 1:
        raise SpecError(f"--local runs on this machine only: --nodes must be 1, got {spec.nodes}.")
    Path(spec.job_dir).mkdir(parents=True, exist_ok=True)
    (Path(spec.job_dir) / "job.json").write_text(specs.to_json(spec))
    # submitit unpickles LocalJob in a fresh interpreter: it must find this package.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    executor = submitit.LocalExecutor(folder=render.log_folder(spec) / "local")
    executor.update_parameters(timeout_min=max(1, spec.time_s // 60), signal_delay_s=spec.signal_lead_s,
                               tasks_per_node=1, nodes=1, gpus_per_node=spec.gpus_per_node)
    job = executor.submit(LocalJob(spec))
    _record_job(Path(spec.job_dir), str(job.job_id), local=True)
    logger.info("local job %s: logs in %s and %s", job.job_id, job.paths.stdout, job.paths.stderr)
    return job.result()
