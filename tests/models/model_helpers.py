"""Shared by the models tests: the repo's model YAMLs and a TrainConfig pointing at a model folder."""

from __future__ import annotations

from pathlib import Path

from easyanimate.config import parse_args

REPO = Path(__file__).resolve().parents[2]
# Tiny models saved, and outputs computed, by EasyAnimate's own classes (tests/fixtures/README.md).
FIXTURES = REPO / "tests" / "fixtures" / "easyanimate_original_layout"
YAML = {"v5.1": REPO / "configs" / "easyanimate_video_v5.1_magvit_qwen.yaml",
        "v5": REPO / "configs" / "easyanimate_video_v5_magvit_multi_text_encoder.yaml"}
LOSS = {"v5.1": "flow", "v5": "ddpm"}


def train_config(folder: Path, version: str, *extra: str):
    return parse_args(["--pretrained_model_name_or_path", str(folder), "--config_path", str(YAML[version]),
                       "--loss_type", LOSS[version], *extra])


def copy_model(src: Path, dst: Path) -> Path:
    """A private, writable copy of a model folder (for corrupting it)."""
    import shutil
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def edit_weights(folder: Path, edit) -> None:
    """Apply ``edit(state_dict)`` to the single safetensors file in ``folder``."""
    from safetensors.torch import load_file, save_file
    path = next(folder.glob("*.safetensors"))
    state = load_file(path)
    edit(state)
    save_file(state, path)


def edit_config(folder: Path, edit, name: str = "config.json") -> None:
    import json
    path = folder / name
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
