"""The per-node training command: ``apptainer exec ... accelerate launch ... easyanimate/train_control.py FLAGS``.

Pure functions of the job spec and the node's place in the job; ``launch.py`` runs what they build and
``--dry-run`` prints it. Standard library only.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from slurm import nccl
from slurm.spec import JobSpec

INSIDE = "slurm/inside.py"


@dataclass(frozen=True)
class NodeContext:
    """Where this node sits in the job (from SLURM_* on a cluster, made up for --local and --dry-run)."""
    job_id: str
    num_nodes: int
    node_rank: int
    master_addr: str
    master_port: str
    restart_count: int = 0

    @property
    def attempt_id(self) -> str:
        return f"{self.job_id}.{self.restart_count}"


def master_port(job_id: str) -> int:
    """Stable across requeues of one job, different for jobs sharing a node; below the ephemeral range."""
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return 20000 + int(digits) % 10000


def attempt_dir(spec: JobSpec, node: NodeContext) -> Path:
    return Path(spec.job_dir) / "attempts" / node.attempt_id


def env_file(spec: JobSpec, node: NodeContext) -> Path:
    return attempt_dir(spec, node) / f"node{node.node_rank}.env"


def training_env(spec: JobSpec) -> dict[str, str]:
    """Variables the training processes must see, whatever the image or the host set."""
    env = {
        # torchrun's agent forwards SIGTERM to the workers, then SIGKILLs them after this many seconds: give a
        # signal-triggered save as long as SLURM gives the job.
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(max(30, spec.signal_lead_s)),
        "TORCH_FR_DUMP_TEMP_FILE": str(Path(spec.job_dir) / "nccl_trace" / "rank_"),
        "PYTHONUNBUFFERED": "1",
    }
    if spec.cache_dir:  # DeepSpeed's JIT ops compile once per cache, not once per job
        cache = os.path.abspath(os.path.expanduser(spec.cache_dir))
        env.update(TORCH_EXTENSIONS_DIR=f"{cache}/torch_extensions", TRITON_CACHE_DIR=f"{cache}/triton")
    if spec.gpus_per_node == 0:
        env["DS_ACCELERATOR"] = "cpu"
    env.update(nccl.environment(spec.nccl, {}, collective_timeout_min=spec.collective_timeout_min))
    env.update(spec.env)
    return env


def accelerate_argv(spec: JobSpec, node: NodeContext) -> list[str]:
    world = node.num_nodes * spec.procs_per_node
    argv = [spec.train_python, "-m", "accelerate.commands.launch",
            "--num_machines", str(node.num_nodes), "--machine_rank", str(node.node_rank),
            "--main_process_ip", node.master_addr, "--main_process_port", node.master_port,
            "--num_processes", str(world), "--mixed_precision", spec.mixed_precision, "--dynamo_backend", "no"]
    if spec.deepspeed:
        argv += ["--use_deepspeed", "--deepspeed_config_file", spec.deepspeed_config,
                 "--deepspeed_multinode_launcher", "standard"]
    elif world > 1:
        # accelerate's only torchrun path; on CPU-only nodes it starts gloo workers just the same.
        argv += ["--multi_gpu"]
    elif spec.gpus_per_node == 0:
        argv += ["--cpu"]
    return argv + [spec.entry, *spec.train_args]


def _covered(path: str, by: list[str]) -> bool:
    return any(path == b or path.startswith(b.rstrip("/") + "/") for b in by)


def binds(spec: JobSpec) -> list[str]:
    """Apptainer binds: code and data read-only, job and output folders writable (nested binds after parents)."""
    root = os.path.abspath(spec.root)
    read_only = [root] + [p for p in dict.fromkeys(os.path.abspath(p) for p in spec.data_paths)
                          if not _covered(p, [root])]
    writable = [os.path.abspath(spec.job_dir)]
    if spec.cache_dir:
        writable.append(os.path.abspath(os.path.expanduser(spec.cache_dir)))
    output = os.path.abspath(spec.output_dir)
    if not _covered(output, writable):
        writable.append(output)
    return [f"{p}:{p}:ro" for p in read_only] + [f"{p}:{p}" for p in writable] + list(spec.binds)


def container_argv(spec: JobSpec, node: NodeContext) -> list[str]:
    if spec.container == "none":
        return []
    argv = ["apptainer", "exec"]
    if spec.gpus_per_node > 0:
        argv.append("--nv")
    # Host variables pass into the container, but the image's own win over them: the env file always wins.
    # No --cleanenv/--containall: they would drop SLURM_* as well.
    argv += ["--bind", ",".join(binds(spec)), "--env-file", str(env_file(spec, node)),
             "--pwd", os.path.abspath(spec.root), spec.image]
    return argv


def node_argv(spec: JobSpec, node: NodeContext) -> list[str]:
    """The full command one node runs: container, the in-container env report, then accelerate."""
    return container_argv(spec, node) + [spec.train_python, INSIDE, "--", *accelerate_argv(spec, node)]


def env_file_text(env: dict[str, str]) -> str:
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
