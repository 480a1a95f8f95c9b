"""The four training commands of the seed document (EasyAnimate's README_TRAIN_CONTROL.md), as the repository keeps
them: one job file each in configs/jobs/. Parsed into (accelerate launch flags, training flags) argv lists.

The seed document itself is read only where it lies beside the repository (``../shared/seed``), to check that the
job files still say what it says; nothing else depends on it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "configs" / "jobs"
SEED = REPO.parent / "shared" / "seed" / "README_TRAIN_CONTROL.md"
JOB_FILES = {"EasyAnimateV5.1 without deepspeed": "v5.1_control.yaml",
             "EasyAnimateV5.1 with deepspeed": "v5.1_control_deepspeed.yaml",
             "EasyAnimateV5 without deepspeed": "v5_control.yaml",
             "EasyAnimateV5 with deepspeed": "v5_control_deepspeed.yaml"}
TITLES = tuple(JOB_FILES)


def job_command(job_file: Path) -> tuple[list[str], list[str]]:
    """A job file's (accelerate launch flags, training flags), written as the seed writes them."""
    from slurm.training import argv_from_mapping

    job = yaml.safe_load(job_file.read_text())
    if job.get("deepspeed"):
        launch = ["--use_deepspeed", "--deepspeed_config_file",
                  job.get("deepspeed_config", "configs/zero_stage2_config.json"),
                  "--deepspeed_multinode_launcher", "standard"]
    else:
        launch = [f"--mixed_precision={job.get('mixed_precision', 'bf16')}"]
    return launch, argv_from_mapping(job["train"])


def seed_commands() -> dict[str, tuple[list[str], list[str]]]:
    """title -> (accelerate launch flags, training flags), from configs/jobs/."""
    return {title: job_command(JOBS / name) for title, name in JOB_FILES.items()}


def seed_document_commands(path: Path = SEED) -> dict[str, tuple[list[str], list[str]]]:
    """The same four commands read from the seed document, shell variables left as $NAME."""
    text = path.read_text()
    commands = {}
    for title in TITLES:
        block = text.split(title + ":", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
        launch = next(line for line in block.replace("\\\n", " ").splitlines() if line.startswith("accelerate launch"))
        tokens = shlex.split(launch)
        script = next(i for i, tok in enumerate(tokens) if tok.endswith("train_control.py"))
        commands[title] = (tokens[2:script], tokens[script + 1:])
    return commands


def with_values(flags: list[str], **values: str) -> list[str]:
    """Replace `--name=...`/`--name value` for each given name (appended when absent, e.g. the run folder the job
    files leave to the SLURM layer); keeps every other seed flag as written."""
    out, skip, seen = [], False, set()
    for i, tok in enumerate(flags):
        if skip:
            skip = False
            continue
        name = re.sub(r"^--", "", tok.split("=", 1)[0])
        if tok.startswith("--") and name in values:
            if "=" not in tok and i + 1 < len(flags) and not flags[i + 1].startswith("--"):
                skip = True
            out.append(f"--{name}={values[name]}")
            seen.add(name)
        else:
            out.append(tok)
    return out + [f"--{name}={value}" for name, value in values.items() if name not in seen]
