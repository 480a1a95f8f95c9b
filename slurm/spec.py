"""The job spec: every option of a SLURM training job, one typed dataclass, the single source of truth.

A job file (``configs/jobs/NAME.yaml``) sets fields; ``submit.py`` flags are generated from the same fields and
override the file; the resolved spec travels inside the sbatch script as JSON, so what ``--dry-run`` prints is
what every node reads. Standard library only (``yaml`` is imported lazily, by the submitting side).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

NCCL_PROFILE_NAMES = ("auto", "infiniband", "roce", "efa", "ethernet", "consumer-gpu")
CONTAINERS = ("apptainer", "none")
SIGNALS = ("USR2", "USR1", "TERM")


# Directives the suite relies on: --sbatch may not replace them (the message names what to use instead).
SUITE_DIRECTIVES = {
    "ntasks-per-node": "one task per node starts every training process (use --processes-per-node).",
    "ntasks": "one task per node starts every training process (use --nodes / --processes-per-node).",
    "open-mode": "logs must survive requeues (append).", "output": "logs live in the job folder (--job-dir).",
    "error": "logs live in the job folder (--job-dir).", "requeue": "runs come back by requeue.",
    "no-requeue": "runs come back by requeue.", "signal": "use --signal and --signal-lead-s.",
    "job-name": "use --name.", "nodes": "use --nodes.", "time": "use --time.", "partition": "use --partition.",
    "chdir": "the job runs in the repository root.",
}


class SpecError(ValueError):
    """A job option we cannot submit; the message names the option and the fix."""


def opt(default: Any, help: str, *, cli: bool = True):
    """A spec field with its help text; ``cli=False`` marks fields set only by the suite itself."""
    meta = {"help": help, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class JobSpec:
    # --- what and where ---
    name: str = opt("easyanimate", "SLURM job name; also names the job folder (runs/NAME) by default.")
    job_dir: Optional[str] = opt(None, "Job folder: the spec, sbatch script, logs and attempt records "
                                 "(default runs/NAME). Must be on a filesystem every node sees.")
    # --- resources ---
    nodes: int = opt(1, "Nodes (one SLURM task per node; accelerate starts the per-GPU processes). MIN-MAX "
                     "(e.g. 2-4) sets max_nodes too.")
    max_nodes: Optional[int] = opt(None, "Most nodes: sbatch gets --nodes NODES-MAX_NODES and each attempt starts on "
                                   "what is free; the checkpoint resumes on any count (elastic resume).")
    gpus_per_node: int = opt(8, "GPUs per node; 0 trains on CPU (gloo; DeepSpeed with DS_ACCELERATOR=cpu).")
    processes_per_node: Optional[int] = opt(None, "Training processes per node (default: gpus_per_node, or 1 "
                                            "on CPU).")
    cpus_per_task: Optional[int] = opt(None, "CPUs for the one task per node, shared by its training processes and "
                                       "their loader workers (default: every core of the node for whole-node jobs, "
                                       "the GPUs' share of the node otherwise; from sinfo at submit time).")
    mem: Optional[str] = opt(None, "Memory per node, sbatch syntax (default: 0 = all of it for whole-node jobs).")
    mem_per_gpu: Optional[str] = opt(None, "Memory per GPU, sbatch syntax (default for single-node GPU jobs: the "
                                     "node's memory / its GPUs, from sinfo).")
    gpu_type: Optional[str] = opt(None, "GPU type for a typed request, e.g. h100 -> --gres=gpu:h100:8.")
    time: str = opt("24:00:00", "Wall-clock limit of one attempt, sbatch syntax ([D-]HH:MM:SS or minutes).")
    partition: Optional[str] = opt(None, "SLURM partition.")
    account: Optional[str] = opt(None, "SLURM account.")
    qos: Optional[str] = opt(None, "SLURM quality of service.")
    constraint: Optional[str] = opt(None, "SLURM node features (--constraint).")
    exclusive: Optional[bool] = opt(None, "Whole nodes only (--exclusive); default: yes for multi-node jobs.")
    # --- site options ---
    reservation: Optional[str] = opt(None, "SLURM reservation (--reservation).")
    nodelist: Optional[str] = opt(None, "Run on these nodes only (--nodelist).")
    exclude: Optional[str] = opt(None, "Never run on these nodes (--exclude).")
    mail_type: Optional[str] = opt(None, "When SLURM mails (--mail-type, e.g. END,FAIL,REQUEUE).")
    mail_user: Optional[str] = opt(None, "Who SLURM mails (--mail-user).")
    dependency: Optional[str] = opt(None, "Start after other jobs (--dependency, e.g. afterok:123).")
    sbatch: list[str] = opt([], "Any other sbatch option as KEY=VALUE (KEY alone for a bare flag), e.g. "
                            "--sbatch gres-flags=enforce-binding; repeatable.")
    srun_args: list[str] = opt([], "Extra srun option for the training step, e.g. --srun-arg=--mpi=none; "
                               "repeatable.")
    setup: list[str] = opt([], "Shell line run in the batch script before anything else (module load ...); "
                           "repeatable.")
    # --- runtime ---
    container: str = opt("apptainer", "apptainer: run inside the image on every node; none: the host's Python "
                         "environment (CI, laptops).")
    image: Optional[str] = opt(None, "Apptainer image (.sif) built from containers/easyanimate.def.")
    binds: list[str] = opt([], "Extra Apptainer binds SRC[:DST[:ro]]; model and data folders are bound "
                           "read-only and the output folder writable automatically.")
    cache_dir: Optional[str] = opt(None, "Writable compile caches (TORCH_EXTENSIONS_DIR, TRITON_CACHE_DIR) shared by "
                                   "jobs; default: the tools' own under $HOME (Apptainer binds $HOME).")
    nccl: str = opt("auto", f"NCCL profile: {', '.join(NCCL_PROFILE_NAMES)} (see slurm/nccl.py).")
    env: dict[str, str] = opt({}, "Explicit environment for the training processes (K=V); wins over the NCCL "
                              "profile and the image.")
    deepspeed: bool = opt(False, "DeepSpeed ZeRO-2 (accelerate --use_deepspeed, multinode launcher standard).")
    deepspeed_config: str = opt("configs/zero_stage2_config.json", "DeepSpeed JSON, relative to the repository.")
    mixed_precision: str = opt("bf16", "accelerate --mixed_precision: no, fp16 or bf16.")
    entry: str = opt("easyanimate/train_control.py", "Training script, relative to the repository.")
    train: dict[str, Any] = opt({}, "The seed's training flags (flag name -> value), as in the job file.",
                                cli=False)
    # --- preemption and requeue ---
    signal: str = opt("USR2", "Signal SLURM sends before the time limit and on preemption (no B: prefix: every "
                      "process of the step gets it).")
    signal_lead_s: Optional[int] = opt(None, "Seconds before the time limit that the signal arrives; must cover "
                                       "one step plus a checkpoint save (default: computed from the model's "
                                       "checkpoint size, or the save this job folder measured; submit prints it).")
    max_preemptions: int = opt(20, "Requeues allowed after preemptions (real ones or scancel --signal).")
    max_timeouts: int = opt(10, "Requeues allowed after reaching the time limit.")
    max_node_failures: int = opt(2, "Requeues allowed after a node died or vanished mid-attempt.")
    teardown_grace_s: int = opt(120, "Seconds the training processes get to exit once the run's complete.json "
                                "is committed; then each node's launcher ends them, so that a shutdown that hangs "
                                "(NCCL/gloo teardown, torchrun's exit barrier) cannot turn a finished run into a "
                                "TIMEOUT.")
    collective_timeout_min: int = opt(30, "Collective timeout (DeepSpeed / torch.distributed): a dead peer "
                                      "fails the job after this instead of hanging it.")
    # --- resolved by the suite at submit time ---
    root: str = opt(".", "Repository root: the job runs there (entry and DeepSpeed config are relative to it).",
                    cli=False)
    python: str = opt("python3", "Host Python that runs slurm/launch.py on the nodes (standard library only).",
                      cli=False)
    train_python: str = opt("python", "Python that runs accelerate (inside the image, or the host venv with "
                            "--container none).", cli=False)
    train_args: list[str] = opt([], "Final training argv, resolved from train plus extra flags.", cli=False)
    output_dir: str = opt("", "The trainer's run folder (checkpoints and markers), resolved.", cli=False)
    data_paths: list[str] = opt([], "Model and data paths bound read-only into the container.", cli=False)

    # -- derived values --
    @property
    def procs_per_node(self) -> int:
        if self.processes_per_node is not None:
            return self.processes_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def time_s(self) -> int:
        return time_to_seconds(self.time)


FIELDS = {f.name: f for f in dataclasses.fields(JobSpec)}

_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def time_to_seconds(value: str) -> int:
    """sbatch --time syntax: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _TIME.match(str(value).strip())
    if m is None:
        raise SpecError(f"--time: {value!r} is not sbatch time syntax ([D-]HH:MM:SS or minutes).")
    d, a, b, c = (int(m[k]) if m[k] is not None else None for k in "dabc")
    if d is not None:  # D-H[:M[:S]]
        return ((d * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    if c is not None:
        return (a * 60 + b) * 60 + c
    if b is not None:
        return a * 60 + b
    return a * 60


def default_value(name: str) -> Any:
    f = FIELDS[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def from_mapping(values: dict[str, Any], *, source: str) -> JobSpec:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise SpecError(f"{source}: unknown job option(s) {unknown}; valid: {sorted(FIELDS)}")
    return JobSpec(**values)


def load_job_file(path: str | Path) -> dict[str, Any]:
    """A job YAML as a plain mapping (validated later, once merged with the command line)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SpecError(f"--job: {path} must hold a mapping of job options.")
    return data


def to_json(spec: JobSpec) -> str:
    # ensure_ascii + indent: every line starts with a brace or spaces, so no line can equal a heredoc delimiter.
    return json.dumps(dataclasses.asdict(spec), indent=2, ensure_ascii=True)


def from_json(text: str) -> JobSpec:
    return from_mapping(json.loads(text), source="job.json")


def read(path: str | Path) -> JobSpec:
    return from_json(Path(path).read_text())


def _no_control_chars(name: str, value: str) -> None:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise SpecError(f"--{name.replace('_', '-')}: {value!r} contains a newline or control character.")


def validate(spec: JobSpec) -> None:
    """Raise SpecError naming the option and the fix; called once, before rendering."""
    for name in ("name", "job_dir", "image", "cache_dir", "partition", "account", "qos", "constraint", "mem", "root",
                 "python", "train_python", "output_dir", "mem_per_gpu", "gpu_type", "reservation", "nodelist",
                 "exclude", "mail_type", "mail_user", "dependency"):
        value = getattr(spec, name)
        if value is not None:
            _no_control_chars(name, str(value))
    if not spec.name.strip():
        raise SpecError("--name: must not be empty.")
    if spec.nodes < 1:
        raise SpecError(f"--nodes: must be >= 1, got {spec.nodes}.")
    if spec.max_nodes is not None and spec.max_nodes < spec.nodes:
        raise SpecError(f"--max-nodes: {spec.max_nodes} is below --nodes {spec.nodes}; pass --nodes MIN-MAX.")
    if spec.gpus_per_node < 0:
        raise SpecError(f"--gpus-per-node: must be >= 0, got {spec.gpus_per_node}.")
    if spec.procs_per_node < 1:
        raise SpecError(f"--processes-per-node: must be >= 1, got {spec.processes_per_node}.")
    if spec.container not in CONTAINERS:
        raise SpecError(f"--container: {spec.container!r}; choose one of {CONTAINERS}.")
    if spec.container == "apptainer" and not spec.image:
        raise SpecError("--image: the apptainer container needs an image (build it with containers/build.sh), "
                        "or pass --container none to use the host environment.")
    if spec.nccl not in NCCL_PROFILE_NAMES:
        raise SpecError(f"--nccl: unknown profile {spec.nccl!r}; choose one of {NCCL_PROFILE_NAMES}.")
    if spec.signal not in SIGNALS:
        raise SpecError(f"--signal: {spec.signal!r}; choose one of {SIGNALS}.")
    if spec.mixed_precision not in ("no", "fp16", "bf16"):
        raise SpecError(f"--mixed-precision: {spec.mixed_precision!r}; choose no, fp16 or bf16.")
    if spec.signal_lead_s is None:
        raise SpecError("--signal-lead-s: not resolved (jobs.build_spec computes the default).")
    if spec.signal_lead_s < 0 or spec.signal_lead_s >= spec.time_s:
        raise SpecError(f"--signal-lead-s: {spec.signal_lead_s} must be >= 0 and shorter than --time "
                        f"({spec.time_s} s).")
    for name in ("max_preemptions", "max_timeouts", "max_node_failures"):
        if getattr(spec, name) < 0:
            raise SpecError(f"--{name.replace('_', '-')}: must be >= 0.")
    if spec.collective_timeout_min < 1:
        raise SpecError("--collective-timeout-min: must be >= 1.")
    if spec.mem is not None and spec.mem_per_gpu is not None:
        raise SpecError("--mem and --mem-per-gpu: sbatch takes one of them; drop one.")
    if spec.gpu_type is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.gpu_type):
        raise SpecError(f"--gpu-type: {spec.gpu_type!r} is not a GPU type name (e.g. h100, a100_80g).")
    for item in spec.sbatch:
        key = item.partition("=")[0]
        if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise SpecError(f"--sbatch: {item!r}: expected KEY=VALUE with a long sbatch option name as KEY "
                            "(e.g. gres-flags=enforce-binding).")
        if key in SUITE_DIRECTIVES:
            raise SpecError(f"--sbatch {key}: the suite sets --{key} itself; " + SUITE_DIRECTIVES[key])
    for line in [*spec.sbatch, *spec.srun_args, *spec.setup]:
        _no_control_chars("sbatch/--srun-arg/--setup", line)
    for key, value in spec.env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SpecError(f"--env: {key!r} is not a valid environment variable name.")
        _no_control_chars("env", str(value))


def split_node_range(values: dict[str, Any]) -> dict[str, Any]:
    """``nodes: "2-4"`` (job file or --nodes) as nodes=2, max_nodes=4; a plain count is left alone."""
    nodes = values.get("nodes")
    if isinstance(nodes, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", nodes)
        if not match:
            raise SpecError(f"--nodes: {nodes!r} is neither a count (4) nor a range (2-4).")
        values = {**values, "nodes": int(match.group(1))}
        if match.group(2):
            values["max_nodes"] = int(match.group(2))
    return values
