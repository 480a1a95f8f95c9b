"""Run the trainer the way users do (accelerate launch) on tiny models and the demo data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from seed_commands import seed_commands, with_values

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "easyanimate" / "train_control.py")
CONFIGS = REPO / "configs"

# The seed's sizes scaled down to CPU, as the issue allows (paths, sizes, workers, step counts).
TINY = dict(image_sample_size="64", video_sample_size="32", token_sample_size="32", video_sample_n_frames="9",
            video_sample_stride="1", dataloader_num_workers="0", checkpointing_steps="2")


def train_env() -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def launch(launch_flags: list[str], flags: list[str], *, processes: int = 1, timeout: int = 600,
           port: int = 29517, as_module: bool = False) -> subprocess.CompletedProcess:
    """`accelerate launch ... easyanimate/train_control.py FLAGS` (or `-m easyanimate.train_control`)."""
    entry = ["-m", "easyanimate.train_control"] if as_module else [TRAIN]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_flags, "--num_processes", str(processes),
           "--num_machines", "1", "--main_process_port", str(port), *entry, *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=train_env(), cwd=REPO)


def seed_command(title: str, *, model: Path, data: Path, output: Path, steps: int, **overrides: str
                 ) -> tuple[list[str], list[str]]:
    """The seed's command `title`, with our paths (configs/ for config/) and tiny sizes."""
    launch_flags, flags = seed_commands()[title]
    launch_flags = [str(CONFIGS / Path(f).name) if f.endswith(".json") else f for f in launch_flags]
    values = dict(TINY, pretrained_model_name_or_path=str(model), train_data_dir=str(data),
                  train_data_meta=str(data / "metadata_control.json"), output_dir=str(output),
                  config_path=str(CONFIGS / Path(_flag(flags, "config_path")).name), **overrides)
    flags = with_values(flags, **values) + [f"--max_train_steps={steps}", "--report_to=none"]
    return launch_flags, flags


def _flag(flags: list[str], name: str) -> str:
    for i, tok in enumerate(flags):
        if tok.startswith(f"--{name}="):
            return tok.split("=", 1)[1]
        if tok == f"--{name}":
            return flags[i + 1]
    raise KeyError(name)


def metrics(output: Path) -> list[dict]:
    path = output / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def ledger_ids(output: Path, rank: int) -> list[int]:
    """Every sample id rank `rank` trained on, in order (from --sample_ledger)."""
    lines = (output / "ledger" / f"rank{rank}.jsonl").read_text().splitlines()
    return [i for line in lines for i in json.loads(line)["ids"]]
