"""Session fixtures for the models tests: tiny model folders in EasyAnimate's original layout."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_original_v51(tmp_path_factory) -> Path:
    from easyanimate.models.tiny import make_tiny_model
    return make_tiny_model("v5.1", tmp_path_factory.mktemp("models") / "tiny-v5.1-original", layout="original")


@pytest.fixture(scope="session")
def tiny_original_v5(tmp_path_factory) -> Path:
    from easyanimate.models.tiny import make_tiny_model
    return make_tiny_model("v5", tmp_path_factory.mktemp("models") / "tiny-v5-original", layout="original")
