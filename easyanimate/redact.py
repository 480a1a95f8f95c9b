"""Secrets never leave the process that needs them: values of variables and flags whose names contain KEY, TOKEN,
SECRET or PASSWORD (``WANDB_API_KEY``, ``HF_TOKEN``, ``--hub_token``) are replaced by ``<redacted>`` in every print,
log, config dump and tracker config. Numbers and booleans are never secrets (``--token_sample_size=512`` stays).
Standard library only; used by the trainer and by slurm/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
REDACTED = "<redacted>"
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


def write_private(path: str | Path, text: str) -> Path:
    """A file only its owner can read, from its first byte (created 0600, never chmod-ed down later)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)
    return path
