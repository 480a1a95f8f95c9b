"""Submitting a job: spec from job file + flags, dry run, sbatch submission, or the same job on this machine
through submitit's LocalExecutor. ``submit.py`` is a thin CLI over these functions; tests call them directly.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from easyanimate import memory, redact, runfolder, sizing
from slurm import attempts, command, render, resources, secrets, training
from slurm import spec as specs
from slurm.command import NodeContext
from slurm.spec import JobSpec, SpecError

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


LIST_OPTIONS = ("binds", "sbatch", "srun_args", "setup")  # the job file's entries, then the command line's


def build_spec(options: dict[str, Any], *, job_file: str | None = None, extra: list[str] = (),
               cwd: Path | None = None, template: bool = False, shape: resources.NodeShape | None = None) -> JobSpec:
    """Job file, then command-line options over it; resolved and validated. ``template=True`` keeps every path
    relative to the directory sbatch will run in (the repository root), for slurm/templates/. ``shape``: the
    partition's node (``resources.partition_shape``), for the resource defaults."""
    values = specs.load_job_file(job_file) if job_file else {}
    options = dict(options)
    env = {**values.pop("env", {}), **options.pop("env", {})}
    lists = {name: list(values.pop(name, [])) + list(options.pop(name, [])) for name in LIST_OPTIONS}
    if "nodes" in options:  # a count on the command line replaces the job file's range; MIN-MAX sets both
        options = specs.split_node_range({"max_nodes": None, **options})
    values = specs.split_node_range(values)
    values.update(options)
    spec = specs.from_mapping({**values, "env": env, **lists}, source=job_file or "options")
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
    wanted = resources.request(nodes=spec.nodes, gpus_per_node=spec.gpus_per_node, exclusive=spec.exclusive,
                               cpus_per_task=spec.cpus_per_task, mem=spec.mem, mem_per_gpu=spec.mem_per_gpu,
                               shape=shape)
    spec.exclusive, spec.cpus_per_task, spec.mem, spec.mem_per_gpu = (wanted.exclusive, wanted.cpus_per_task,
                                                                      wanted.mem, wanted.mem_per_gpu)
    if spec.signal_lead_s is None and spec.nodes >= 1 and spec.procs_per_node >= 1:  # else validate says why
        spec.signal_lead_s = lead_time(spec, measured_save_s(Path(spec.job_dir)))[0]
        if spec.signal_lead_s >= spec.time_s:
            raise SpecError(f"--signal-lead-s: the computed lead time {spec.signal_lead_s}s "
                            f"({lead_time(spec, None)[1]}) does not fit in --time {spec.time}; pass a longer "
                            "--time or an explicit --signal-lead-s.")
    specs.validate(spec)
    if spec.container == "apptainer":
        for bind in command.binds(spec):
            if bind.count(":") > 2 or "," in bind:
                raise SpecError(f"apptainer bind {bind!r}: paths with ',' or ':' cannot be bound; rename or "
                                "symlink the folder.")
    return spec


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "job"


# --- lead time -----------------------------------------------------------------------------------------------

DEFAULT_PARAMS = 12_000_000_000  # EasyAnimate V5/V5.1 12B, when the model folder cannot be read


def transformer_params(flags: dict[str, str]) -> tuple[int, str]:
    """Parameter count of the job's transformer and where it came from: exact, from the model folder's configs (or
    the published shapes of its model YAML when the folder is not on this machine), as the memory plan counts it;
    12B when neither can be read here (no torch on this login node, no model YAML)."""
    try:
        from easyanimate import shapes
        from easyanimate.models import load_model_spec
        folder, note = shapes.sized_folder(flags.get("pretrained_model_name_or_path"), flags.get("config_path"))
        params = shapes.transformer_parameters(folder, load_model_spec(flags.get("config_path") or ""))
    except (ImportError, OSError, ValueError, KeyError) as err:  # ValueError: a model YAML or config refused
        return DEFAULT_PARAMS, f"12B default: the model's size is not readable here ({err})"
    return params, f"{params / 1e9:.2f}B from {folder}/transformer/config.json" + (f" ({note})" if note else "")


def lead_time(spec: JobSpec, measured: float | None) -> tuple[int, str]:
    """Seconds of warning this job needs (one step plus its checkpoint's save, plus margin) and how it was
    reckoned."""
    flags = training.explicit_flags(spec.train_args)
    params, source = transformer_params(flags)
    layout = sizing.Layout(nodes=spec.nodes, gpus_per_node=max(1, spec.procs_per_node), deepspeed=spec.deepspeed)
    seconds = sizing.lead_time_s(params, layout, measured_save_s=measured)
    if measured is not None:
        how = f"one step + {sizing.SAVE_SAFETY:g} x the {measured:.0f}s save this job folder measured"
    else:
        per_node = max(sizing.checkpoint_bytes_per_node(params, layout)) / sizing.GB
        how = (f"one step (<= {sizing.CONSERVATIVE_STEP_S:.0f}s) + {sizing.SAVE_SAFETY:g} x the save of "
               f"{per_node:.0f} GB on the busiest node at {sizing.CONSERVATIVE_WRITE_GBPS:g} GB/s")
    return seconds, f"{how} + {sizing.MARGIN_S:.0f}s margin; {source}"


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
    grace = attempts.partition_info(partition).get("GraceTime", "")
    return int(grace) if grace.isdigit() else None


def lead_time_warnings(spec: JobSpec, measured: float | None, grace: int | None) -> list[str]:
    """The signal must leave time for the step in flight plus the save; so must a preempting partition's grace."""
    need, how = lead_time(spec, measured)
    found = []
    if spec.signal_lead_s < need:
        found.append(f"--signal-lead-s {spec.signal_lead_s} is shorter than this job needs, {need}s ({how}): "
                     f"raise it to at least {need}.")
    if grace is not None and 0 < grace < need:
        found.append(f"partition {spec.partition} gives preempted jobs GraceTime={grace}s, less than the {need}s "
                     f"this job needs ({how}): a preemption will kill the save; ask for a partition or QOS with a "
                     "longer GraceTime, or save more often (--checkpointing_steps).")
    return found


def lead_time_line(spec: JobSpec, measured: float | None) -> str:
    need, how = lead_time(spec, measured)
    given = "" if spec.signal_lead_s == need else f" (this job needs {need}s)"
    return f"signal {spec.signal} {spec.signal_lead_s}s before the time limit{given}: {how}"


# --- inputs and resources ------------------------------------------------------------------------------------

TRAINER = "easyanimate/train_control.py"
INPUT_FLAGS = {"pretrained_model_name_or_path": "model folder", "config_path": "model config YAML",
               "train_data_dir": "data folder", "train_data_meta": "metadata file", "transformer_path": "weights",
               "vae_path": "weights"}


def missing_inputs(spec: JobSpec) -> list[str]:
    """What the job needs on disk and does not find, each with its flag, then the trainer's own validation of
    its flags (``easyanimate.config``: no torch import). Empty when the job can run."""
    root = Path(spec.root)
    flags = training.explicit_flags(spec.train_args)
    found = [f"--{flag} {flags[flag]}: {what} not found" for flag, what in INPUT_FLAGS.items()
             if isinstance(flags.get(flag), str) and not (root / flags[flag]).exists()]
    found += [f"--validation_paths {p}: control video not found" for p in flags.get("validation_paths") or []
              if not (root / p).exists()]
    if spec.container == "apptainer" and spec.image and not Path(spec.image).is_file():
        found.append(f"--image {spec.image}: image not found (build it with containers/build.sh)")
    if not (root / spec.entry).is_file():
        found.append(f"--entry {spec.entry}: training script not found")
    if spec.deepspeed and not (root / spec.deepspeed_config).is_file():
        found.append(f"--deepspeed-config {spec.deepspeed_config}: DeepSpeed config not found")
    if not found and spec.entry == TRAINER:
        from easyanimate import config  # argparse and dataclasses only
        try:
            config.validate(config.parse_args(spec.train_args))
        except config.ConfigError as error:
            found.append(f"training flags: {error}")
    return found


def resource_notes(spec: JobSpec) -> list[str]:
    return list(resources.request(nodes=spec.nodes, gpus_per_node=spec.gpus_per_node, exclusive=spec.exclusive,
                                  cpus_per_task=spec.cpus_per_task, mem=spec.mem, mem_per_gpu=spec.mem_per_gpu,
                                  shape=None).notes)


# --- dry run and submission ----------------------------------------------------------------------------------

def example_node(spec: JobSpec, node_rank: int = 0) -> NodeContext:
    """The node context a dry run shows: the values a real job fills in at run time, as placeholders."""
    return NodeContext(job_id="<job id>", num_nodes=spec.nodes, node_rank=node_rank,
                       master_addr="<first host of SLURM_JOB_NODELIST>",
                       master_port="<20000 + job id % 10000>", restart_count=0)


def node_command_text(spec: JobSpec, node_rank: int = 0) -> str:
    return shlex.join(redact.argv(command.node_argv(spec, example_node(spec, node_rank))))


def resources_text(spec: JobSpec) -> str:
    gpus = f"{spec.gpus_per_node} GPU(s) ({render.directives(spec).get('gres')})" if spec.gpus_per_node else "no GPU"
    cpus = (f"{spec.cpus_per_task} CPUs for the node's task, {spec.cpus_per_task // spec.procs_per_node} per "
            "training process" if spec.cpus_per_task else "CPUs: every core of the node ($SLURM_CPUS_ON_NODE)"
            if spec.exclusive else "CPUs: SLURM's default")
    memory = ("all of the node's memory (--mem=0)" if spec.mem == "0" else f"--mem={spec.mem}" if spec.mem else
              f"--mem-per-gpu={spec.mem_per_gpu}" if spec.mem_per_gpu else "SLURM's default memory")
    whole = "whole nodes (--exclusive)" if spec.exclusive else "shared nodes"
    return (f"{spec.nodes} node(s) x {gpus}, {spec.procs_per_node} training process(es) per node, "
            f"{'DeepSpeed ZeRO-2' if spec.deepspeed else 'DDP'}; {whole}; {cpus}; {memory}")


def dry_run_text(spec: JobSpec, warnings: list[str] = ()) -> str:
    env = command.node_env(spec, example_node(spec))
    lines = [f"# ---- sbatch script ({Path(spec.job_dir) / 'submission.sbatch'}) ----", render.sbatch_script(spec),
             f"# ---- per-node launch command (node 0 of {spec.nodes}; node i passes --machine_rank i) ----",
             node_command_text(spec), "",
             f"# ---- resources: {resources_text(spec)}",
             f"# ---- {lead_time_line(spec, measured_save_s(Path(spec.job_dir)))}", "",
             f"# ---- training environment (NCCL profile {spec.nccl!r}; logged again inside the container) ----",
             *(f"{k}={shlex.quote(v)}" for k, v in sorted(redact.mapping(env).items()))]
    plan, plan_warnings = memory.job_report(spec)  # the memory plan (easyanimate/memory.py)
    lines += [f"# warning: {w}" for w in [*warnings, *resource_notes(spec), *plan_warnings]]
    lines += ["# ---- memory per GPU (estimate, easyanimate/memory.py) ----", *plan.splitlines()]
    return "\n".join(lines) + "\n"


def template_text(job_file: str | Path, image: str = "easyanimate.sif") -> str:
    """slurm/templates/NAME.sbatch for a job file: the same renderer, paths relative to the repository root."""
    return render.sbatch_script(build_spec({"image": image}, job_file=str(job_file), template=True))


def submit(spec: JobSpec) -> str:
    """Check the inputs, write the job folder and sbatch the script; returns the job id."""
    missing = missing_inputs(spec)
    if missing:
        raise SpecError("not submitted, the job would fail after the queue:\n  " + "\n  ".join(missing))
    for warning in memory.job_report(spec)[1]:  # before the queue wait, not after it
        logger.warning(warning)
    return sbatch_job(spec)


def sbatch_job(spec: JobSpec) -> str:
    """Write the job folder and sbatch the script, unchecked (the preflight job runs its own program)."""
    job_dir = Path(spec.job_dir)
    render.log_folder(spec).mkdir(parents=True, exist_ok=True)  # sbatch opens --output before the script runs
    (job_dir / "job.json").write_text(specs.to_json(secrets.shown(spec)))
    secrets.write(spec)
    script = job_dir / "submission.sbatch"
    script.write_text(render.sbatch_script(spec))
    done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, cwd=spec.root)
    if done.returncode != 0:
        raise SpecError(f"sbatch refused the job: {done.stderr.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    attempts.record_job(job_dir, job_id, local=False)
    return job_id


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
        self.spec = secrets.reveal(self.spec)
        job_id = submitit.JobEnvironment().job_id
        restart = sum(1 for p in attempts.attempt_dirs(Path(self.spec.job_dir)) if p.name.startswith(f"{job_id}."))
        node = NodeContext(job_id=job_id, num_nodes=1, node_rank=0, master_addr="127.0.0.1",
                           master_port=str(command.master_port(job_id)), restart_count=restart)
        if launch.begin(self.spec, node) != 0:
            raise RuntimeError(f"attempt {node.attempt_id} refused: retry budget exhausted (see status)")
        status = launch.run_node(self.spec, node, forward_signals=True)
        code, outcome = launch.end(self.spec, node, status, "", requeue_job=lambda _job: None)
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
    (Path(spec.job_dir) / "job.json").write_text(specs.to_json(secrets.shown(spec)))
    secrets.write(spec)
    # submitit unpickles LocalJob in a fresh interpreter: it must find this package.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    executor = submitit.LocalExecutor(folder=render.log_folder(spec) / "local")
    executor.update_parameters(timeout_min=max(1, spec.time_s // 60), signal_delay_s=spec.signal_lead_s,
                               tasks_per_node=1, nodes=1, gpus_per_node=spec.gpus_per_node)
    job = executor.submit(LocalJob(secrets.shown(spec)))  # pickled into the log folder: no secrets in it
    attempts.record_job(Path(spec.job_dir), str(job.job_id), local=True)
    logger.info("local job %s: logs in %s and %s", job.job_id, job.paths.stdout, job.paths.stderr)
    return job.result()
