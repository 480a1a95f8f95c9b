"""Start programs under `accelerate launch` with 2 CPU processes (gloo), plain DDP or DeepSpeed ZeRO-2."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from slurm.launch import signal_tree

REPO = Path(__file__).resolve().parents[2]
ZERO2_CPU = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
             "bf16": {"enabled": False}, "zero_optimization": {"stage": 2}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env(mode: str) -> dict:
    out = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    # DeepSpeed's CPU comm op is compiled per venv; a cache shared by several venvs is rebuilt by each in turn.
    out.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    out.pop("CUDA_VISIBLE_DEVICES", None)
    out.pop("ACCELERATE_USE_CPU", None)
    if mode == "plain":
        # Without it accelerate on a GPU-less machine sees two unrelated single processes (no DDP); with it
        # under --use_deepspeed, accelerate silently drops DeepSpeed and runs DDP.
        out["ACCELERATE_USE_CPU"] = "true"
    return out


def launch_flags(mode: str, workdir: Path, processes: int = 2, ds_config: Path | None = None) -> list[str]:
    flags = ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    if mode == "deepspeed":
        if ds_config is None:
            ds_config = workdir / "zero2_cpu.json"
            ds_config.write_text(json.dumps(ZERO2_CPU))
        return ["--use_deepspeed", "--deepspeed_config_file", str(ds_config), *flags]
    return ["--multi_gpu", *flags] if processes > 1 else flags  # accelerate refuses --multi_gpu for one


def alive(pid: int) -> bool:
    """Running, or stopped: neither gone nor a zombie (PID 1 here reaps zombies slowly; a zombie is dead enough)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Launched:
    """A launched process tree. Its own session, so a test can signal all of it as slurmstepd does; torchrun
    starts each worker in a session of its own, so a kill reaches them by the tree, not by the group."""

    def __init__(self, process: subprocess.Popen, log: Path):
        self.process, self.log = process, log

    def wait(self, timeout: int = 300) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.kill_all()
                self.process.wait()

    def signal_all(self, signum: int) -> None:
        """``signum`` to the launcher's process group (torchrun passes it on to its workers)."""
        os.killpg(self.process.pid, signum)

    def kill_all(self) -> None:
        """SIGKILL to the launcher's group and to every process below it, a worker in its own session too."""
        signal_tree(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # group members whose parent died before: not in the tree
            os.killpg(self.process.pid, signal.SIGKILL)

    def text(self) -> str:
        return self.log.read_text()


def start(mode: str, program: list[str], workdir: Path, *, processes: int = 2, ds_config: Path | None = None,
          extra_env: dict | None = None) -> Launched:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_flags(mode, workdir, processes, ds_config),
           *program]
    log = workdir / f"launch-{len(list(workdir.glob('launch-*.log')))}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                   env={**env(mode), **(extra_env or {})}, start_new_session=True)
    return Launched(process, log)


def run(mode: str, program: list[str], workdir: Path, *, timeout: int = 300, **kwargs) -> tuple[int, str]:
    """Launch, wait, and return (exit code, the combined log)."""
    launched = start(mode, program, workdir, **kwargs)
    return launched.wait(timeout), launched.text()
