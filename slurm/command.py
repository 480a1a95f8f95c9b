"""The per-node training command: ``apptainer exec ... accelerate launch ... easyanimate/train_control.py FLAGS``.

Pure functions of the job spec and the node's place in the job; ``launch.py`` runs what they build and
``--dry-run`` prints it. Standard library only.

The container runs with ``--cleanenv``: a host PYTHONPATH, PYTHONHOME, virtualenv or ``~/.local`` must not
shadow the image's pinned packages. What the job needs from the host (SLURM's variables, site NCCL/fabric
settings, tracker and hub credentials, locale, proxies) is passed by name, through the runtime's own
``APPTAINERENV_X`` channel (never written to disk); the training variables come from the job's env file.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from easyanimate import redact
from slurm import nccl
from slurm.spec import JobSpec

INSIDE = "slurm/inside.py"
RUNTIMES = ("apptainer", "singularity")  # singularity where a site has not moved to apptainer yet
CONFIG_ERROR_EXIT = 78  # EX_CONFIG: the node cannot start training as configured; never requeued
# Host variables that enter the container despite --cleanenv (prefixes, then exact names).
PASS_PREFIXES = ("SLURM_", "SRUN_", "SLURMD_", "EASYANIMATE_", "NVIDIA_", "NCCL_", "FI_", "UCX_", "OMP_",
                 "MKL_", "HF_", "HUGGING_FACE_", "WANDB_", "TRANSFORMERS_", "DIFFUSERS_", "TOKENIZERS_", "TORCH_",
                 "LC_")
# Not CUDA_HOME and the like: host paths that mean nothing (or the wrong toolkit) inside the image.
PASS_NAMES = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTHONHASHSEED", "LANG", "TZ", "TMPDIR", "USER",
              "LOGNAME", "TERM", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
# Inside the image only: no user site-packages (~/.local is in the bound $HOME).
CONTAINER_ENV = {"PYTHONNOUSERSITE": "1"}


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
    if spec.container != "none":
        env.update(CONTAINER_ENV)
    secret_flags = redact.split_argv(spec.train_args)[1]
    if secret_flags:  # never on the command line, which every user of the node can read
        env[redact.SECRET_ARGS_ENV] = json.dumps(secret_flags)
    env.update(nccl.environment(spec.nccl, {}, collective_timeout_min=spec.collective_timeout_min))
    env.update(spec.env)
    return env


def runs_trainer_directly(spec: JobSpec, node: NodeContext) -> bool:
    """One process without DeepSpeed: accelerate would use its simple launcher (Popen + wait, no signal
    handling), which dies of SIGTERM at once and so ends the SLURM task while the trainer is still saving. One
    process needs no launcher: the trainer runs as the chain's last link and handles SIGTERM itself."""
    return node.num_nodes * spec.procs_per_node == 1 and not spec.deepspeed


def launcher_env(spec: JobSpec, node: NodeContext) -> dict[str, str]:
    """What accelerate's simple launcher would have told the trainer, when we start the trainer ourselves."""
    if not runs_trainer_directly(spec, node):
        return {}
    return {"ACCELERATE_USE_CPU": str(spec.gpus_per_node == 0), "ACCELERATE_MIXED_PRECISION": spec.mixed_precision,
            "ACCELERATE_DYNAMO_BACKEND": "NO"}


def thread_env(spec: JobSpec, environ: dict[str, str] | None) -> dict[str, str]:
    """OMP_NUM_THREADS = the task's cores / the node's training processes. Unset, torch starts a thread per core of
    the machine in every process (and accelerate's CPU path counts the machine's cores, not the job's): 8 ranks on
    a 96-core node would run 768 threads. The job's ``--env`` and the node's environment (the submitting shell's,
    which sbatch exports, or a ``--setup`` line) win. ``environ`` None: a dry run, before the job knows its cores."""
    if "OMP_NUM_THREADS" in spec.env or "OMP_NUM_THREADS" in (environ or {}):
        return {}
    if environ is None:
        cores = spec.cpus_per_task
    else:  # srun always gets --cpus-per-task from the script (SRUN_CPUS_PER_TASK); a local run has none
        cores = int(environ.get("SLURM_CPUS_PER_TASK") or spec.cpus_per_task or len(os.sched_getaffinity(0)))
    procs = spec.procs_per_node
    return {"OMP_NUM_THREADS": str(max(1, cores // procs)) if cores else f"<$SLURM_CPUS_PER_TASK / {procs}>"}


def node_env(spec: JobSpec, node: NodeContext, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Everything the training processes of this node get on top of the image (the env file's contents), given the
    node's own environment (None: a dry run)."""
    return {**training_env(spec), **launcher_env(spec, node), **thread_env(spec, environ)}


def accelerate_argv(spec: JobSpec, node: NodeContext) -> list[str]:
    train_args = redact.split_argv(spec.train_args)[0]  # the secret ones travel in the environment
    if runs_trainer_directly(spec, node):
        return [spec.train_python, spec.entry, *train_args]
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
    return argv + [spec.entry, *train_args]


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


def find_runtime(which=shutil.which) -> str | None:
    """The container runtime on this node's PATH: apptainer, else singularity."""
    return next((path for name in RUNTIMES if (path := which(name))), None)


def container_problem(spec: JobSpec, runtime: str | None) -> str | None:
    """Why this node cannot start the container (a configuration error, not a node failure), or None."""
    if spec.container == "none":
        return None
    if runtime is None:
        return (f"neither {' nor '.join(RUNTIMES)} is on PATH on this node: load it in the job's setup lines "
                "(e.g. module load apptainer), or ask the site where it lives")
    if not spec.image or not os.path.isfile(spec.image):
        return (f"image {spec.image} does not exist on this node: build it (bash containers/build.sh) on a "
                "filesystem every node sees, or fix --image")
    return None


def passthrough_env(environ: dict[str, str], runtime: str) -> dict[str, str]:
    """Host variables the job needs inside despite --cleanenv, in the runtime's ``NAMEENV_X`` form."""
    prefix = os.path.basename(runtime).upper() + "ENV_"
    return {prefix + key: value for key, value in environ.items()
            if key.startswith(PASS_PREFIXES) or key in PASS_NAMES}


def container_argv(spec: JobSpec, node: NodeContext, runtime: str = "apptainer") -> list[str]:
    if spec.container == "none":
        return []
    argv = [runtime, "exec", "--cleanenv"]
    if spec.gpus_per_node > 0:
        argv.append("--nv")
    # Inside: the image's environment, then the passed-through host variables, then the env file (which wins).
    argv += ["--bind", ",".join(binds(spec)), "--env-file", str(env_file(spec, node)),
             "--pwd", os.path.abspath(spec.root), spec.image]
    return argv


def node_argv(spec: JobSpec, node: NodeContext, runtime: str = "apptainer") -> list[str]:
    """The full command one node runs: container, the in-container env report, then accelerate."""
    return container_argv(spec, node, runtime) + [spec.train_python, INSIDE, "--", *accelerate_argv(spec, node)]


def env_file_text(env: dict[str, str]) -> str:
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
