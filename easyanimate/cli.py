"""The `easyanimate` command: one sub-command per tool, each a module with ``main(argv) -> int``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("easyanimate.train_control", "Train a control model (the seed's flags)."),
    "make-tiny-model": ("easyanimate.models.tiny", "Write a tiny random-weight model folder."),
    "make-demo-data": ("easyanimate.data.demo", "Write a small dataset of real mp4s, images and metadata."),
    "check-data": ("easyanimate.data.preflight", "Check every metadata entry before training."),
    "convert-model": ("easyanimate.models.convert", "Write a diffusers-layout folder from either layout."),
    "export": ("easyanimate.training.export", "Export a checkpoint as a diffusers transformer folder."),
    "plot": ("easyanimate.curves", "Summarise a run's training curves and draw them as a PNG."),
    "memory-plan": ("easyanimate.memory", "Per-GPU memory estimate of a training run (no weights loaded)."),
}


def _usage() -> str:
    lines = ["usage: easyanimate COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<16} {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"easyanimate: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
