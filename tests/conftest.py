"""Shared fixtures: tiny model folders and a generated demo dataset, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_v51(tmp_path_factory) -> Path:
    from easyanimate.models.tiny import make_tiny_model
    return make_tiny_model("v5.1", tmp_path_factory.mktemp("models") / "tiny-v5.1")


@pytest.fixture(scope="session")
def tiny_model_v5(tmp_path_factory) -> Path:
    from easyanimate.models.tiny import make_tiny_model
    return make_tiny_model("v5", tmp_path_factory.mktemp("models") / "tiny-v5")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """Folder holding metadata_control.json plus the media it names."""
    from easyanimate.data.demo import make_demo_data
    out = tmp_path_factory.mktemp("demo-data")
    make_demo_data(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_v51_original(tmp_path_factory) -> Path:
    """A tiny model folder in EasyAnimate's own layout (what users have on disk)."""
    from easyanimate.models.tiny import make_tiny_model
    return make_tiny_model("v5.1", tmp_path_factory.mktemp("models") / "tiny-v5.1-original", layout="original")


@pytest.fixture(scope="session")
def tiny_model_v5_original(tmp_path_factory) -> Path:
    from easyanimate.models.tiny import make_tiny_model
    return make_tiny_model("v5", tmp_path_factory.mktemp("models") / "tiny-v5-original", layout="original")
