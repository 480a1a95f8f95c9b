"""Shared by the models tests: the repo's model YAMLs and a TrainConfig pointing at a model folder."""

from __future__ import annotations

from pathlib import Path

from easyanimate.config import parse_args

REPO = Path(__file__).resolve().parents[2]
YAML = {"v5.1": REPO / "configs" / "easyanimate_video_v5.1_magvit_qwen.yaml",
        "v5": REPO / "configs" / "easyanimate_video_v5_magvit_multi_text_encoder.yaml"}
LOSS = {"v5.1": "flow", "v5": "ddpm"}


def train_config(folder: Path, version: str, *extra: str):
    return parse_args(["--pretrained_model_name_or_path", str(folder), "--config_path", str(YAML[version]),
                       "--loss_type", LOSS[version], *extra])
