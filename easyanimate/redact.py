"""Secrets never leave the process that needs them: values of variables and flags whose names contain KEY, TOKEN,
SECRET or PASSWORD (``WANDB_API_KEY``, ``HF_TOKEN``, ``--hub_token``) are replaced by ``<redacted>`` in every print,
log, config dump and tracker config. Numbers and booleans are never secrets (``--token_sample_size=512`` stays).
Nor are they ever on a command line: a process's argv is readable by every user of the node (``ps``,
``/proc/PID/cmdline``), its environment only by its owner. The node launcher takes secret training flags off the
trainer's command line and hands them over in ``EASYANIMATE_SECRET_ARGS``, which the trainer's parser reads.
Standard library only; used by the trainer and by slurm/.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
REDACTED = "<redacted>"
SECRET_ARGS_ENV = "EASYANIMATE_SECRET_ARGS"  # JSON list of the training flags taken off the command line
_PLAIN = re.compile(r"^([-+]?\d+(\.\d*)?([eE][-+]?\d+)?|true|false|none|null|yes|no)$", re.IGNORECASE)


def is_secret(name: str, value: Any) -> bool:
    """A non-empty string value under a name that says it is a credential."""
    return (isinstance(value, str) and value != "" and value != REDACTED and not _PLAIN.match(value)
            and any(word in name.upper() for word in SECRET_WORDS))


def mapping(values: dict[str, Any]) -> dict[str, Any]:
    """A copy with secret values redacted (environments, config dumps, tracker configs)."""
    return {k: REDACTED if is_secret(k, v) else v for k, v in values.items()}


def argv(args: list[str]) -> list[str]:
    """A copy of a command line with the values of secret flags redacted (``--x_token=V`` and ``--x_token V``)."""
    out = []
    for i, arg in enumerate(args):
        name, sep, value = arg.partition("=")
        if arg.startswith("--") and sep and is_secret(name, value):
            out.append(f"{name}={REDACTED}")
        elif i > 0 and args[i - 1].startswith("--") and "=" not in args[i - 1] and not arg.startswith("--") \
                and is_secret(args[i - 1], arg):
            out.append(REDACTED)
        else:
            out.append(arg)
    return out


def split_argv(args: list[str]) -> tuple[list[str], list[str]]:
    """(the command line without its secret flags, those flags with their values, in their order)."""
    shown = argv(args)
    public, hidden = [], []
    for i, arg in enumerate(args):
        flag_of_secret = arg.startswith("--") and "=" not in arg and i + 1 < len(args) and shown[i + 1] != args[i + 1]
        (hidden if shown[i] != arg or flag_of_secret else public).append(arg)
    return public, hidden


def secret_args(environ: dict[str, str] | None = None) -> list[str]:
    """The secret flags the launcher handed over in the environment (none outside a launched job)."""
    return json.loads((os.environ if environ is None else environ).get(SECRET_ARGS_ENV) or "[]")


def write_private(path: str | Path, text: str) -> Path:
    """A file only its owner can read, from its first byte (created 0600, never chmod-ed down later)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)
    return path
