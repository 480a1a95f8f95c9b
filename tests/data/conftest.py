"""Helpers for the data tests: a TrainConfig with the lead's tiny training sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyanimate.config import parse_args

TINY_FLAGS = ["--image_sample_size=64", "--video_sample_size=32", "--token_sample_size=32",
              "--video_sample_n_frames=9", "--video_sample_stride=1", "--train_batch_size=2", "--video_repeat=1",
              "--random_hw_adapt", "--training_with_video_token_length", "--enable_bucket", "--uniform_sampling",
              "--seed=42", "--train_mode=control_ref"]


def tiny_config(data_dir: Path, *extra: str, meta: str = "metadata_control.json"):
    return parse_args([f"--train_data_dir={data_dir}", f"--train_data_meta={Path(data_dir) / meta}",
                       *TINY_FLAGS, *extra])


@pytest.fixture
def tiny_cfg(request):
    """tiny_cfg(*flags, data_dir=demo data, meta=file name) -> TrainConfig."""

    def make(*extra: str, data_dir: Path | None = None, meta: str = "metadata_control.json"):
        return tiny_config(data_dir or request.getfixturevalue("demo_data"), *extra, meta=meta)

    return make
