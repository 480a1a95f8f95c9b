"""The seed's training flags, from a job file's ``train:`` mapping plus command-line extras to one final argv.

Flags are checked against the trainer's own parser (``easyanimate.config``), so a typo fails at submit time, not
an hour later in the queue. The suite adds what every SLURM run needs: an output folder inside the job folder
unless one is given, ``--resume_from_checkpoint=latest`` (a requeued attempt resumes by itself) and
``--use_deepspeed`` when the job uses DeepSpeed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from easyanimate import hub
from slurm.spec import JobSpec, SpecError

PATH_FLAGS = ("pretrained_model_name_or_path", "train_data_dir", "train_data_meta", "config_path",
              "transformer_path", "vae_path", "output_dir")
DATA_FLAGS = ("pretrained_model_name_or_path", "train_data_dir", "transformer_path", "vae_path")


def argv_from_mapping(flags: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in flags.items():
        if value is None:
            continue
        if value is True:
            argv.append(f"--{key}")
        elif value is False:
            argv.append(f"--{key}=false")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *(str(v) for v in value)]
        else:
            argv.append(f"--{key}={value}")
    return argv


def explicit_flags(argv: list[str]) -> dict[str, Any]:
    """Parse with the trainer's parser; keep only the flags actually given (parsed to their types)."""
    from easyanimate.config import build_parser

    parser = build_parser()
    parser.exit_on_error = False
    parser.allow_abbrev = False  # a typo must not silently become another flag
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    try:
        namespace, unknown = parser.parse_known_args(argv, namespace=namespace)
    except argparse.ArgumentError as error:
        raise SpecError(f"training flags: {error}") from None
    if unknown:
        raise SpecError(f"training flags: unknown {unknown}; the trainer accepts the seed's flags "
                        "(python -m easyanimate.train_control --help).")
    return {key: value for key, value in vars(namespace).items() if value is not unset}


def _absolute(value: str, cwd: Path) -> str:
    return value if os.path.isabs(value) else str((cwd / value).resolve())


def resolve(spec: JobSpec, extra: list[str], *, cwd: Path | None) -> JobSpec:
    """Fill train_args (emptying train), output_dir and data_paths. ``cwd=None`` keeps relative paths (templates: they resolve
    against the directory sbatch runs in, the repository root)."""
    parsed = explicit_flags(argv_from_mapping(spec.train) + list(extra))
    flags = {key: parsed[key] for key in [*spec.train, *parsed] if key in parsed}  # the job file's order
    flags.setdefault("output_dir", str(Path(spec.job_dir) / "output"))
    flags.setdefault("resume_from_checkpoint", "latest")
    if spec.deepspeed:
        flags["use_deepspeed"] = True
    try:
        hub_cache = hub.resolve_flags(flags, cwd) if cwd is not None else []  # org/name -> cached snapshot, here
    except hub.HubModelNotCached as error:
        raise SpecError(str(error)) from None
    if cwd is not None:
        for key in PATH_FLAGS:
            if isinstance(flags.get(key), str):
                flags[key] = _absolute(flags[key], cwd)
        if flags.get("validation_paths"):
            flags["validation_paths"] = [_absolute(p, cwd) for p in flags["validation_paths"]]
    data = hub_cache + [flags[k] for k in DATA_FLAGS if flags.get(k)]
    if flags.get("train_data_meta"):
        data.append(os.path.dirname(flags["train_data_meta"]) or ".")
    data += flags.get("validation_paths") or []
    spec.train_args = argv_from_mapping(flags)
    spec.train = {}  # resolved into train_args, the one list every node reads
    spec.output_dir = flags["output_dir"]
    spec.data_paths = list(dict.fromkeys(data))
    return spec
