"""The four training commands of the seed document, parsed into argv lists (shared by several tests)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

SEED = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "README_TRAIN_CONTROL.md"
TITLES = ("EasyAnimateV5.1 without deepspeed", "EasyAnimateV5.1 with deepspeed",
          "EasyAnimateV5 without deepspeed", "EasyAnimateV5 with deepspeed")


def seed_commands() -> dict[str, tuple[list[str], list[str]]]:
    """title -> (accelerate launch flags, training script flags), shell variables left as $NAME."""
    text = SEED.read_text()
    commands = {}
    for title in TITLES:
        block = text.split(title + ":", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
        launch = next(line for line in block.replace("\\\n", " ").splitlines() if line.startswith("accelerate launch"))
        tokens = shlex.split(launch)
        script = next(i for i, tok in enumerate(tokens) if tok.endswith("train_control.py"))
        commands[title] = (tokens[2:script], tokens[script + 1:])
    return commands


def with_values(flags: list[str], **values: str) -> list[str]:
    """Replace `--name=...`/`--name value` for each given name; keeps every other seed flag as written."""
    out, skip = [], False
    for i, tok in enumerate(flags):
        if skip:
            skip = False
            continue
        name = re.sub(r"^--", "", tok.split("=", 1)[0])
        if tok.startswith("--") and name in values:
            if "=" not in tok and i + 1 < len(flags) and not flags[i + 1].startswith("--"):
                skip = True
            out.append(f"--{name}={values[name]}")
        else:
            out.append(tok)
    return out
