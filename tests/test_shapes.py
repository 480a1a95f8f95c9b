"""Parameter counts from configs alone equal the counts of the models the loader really builds (both layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from easyanimate import shapes
from easyanimate.models import load_model_spec
from easyanimate.models.loading import load_transformer, load_vae

REPO = Path(__file__).resolve().parents[1]
YAML = {"v5.1": REPO / "configs" / "easyanimate_video_v5.1_magvit_qwen.yaml",
        "v5": REPO / "configs" / "easyanimate_video_v5_magvit_multi_text_encoder.yaml"}


def _loaded_counts(folder: Path, spec) -> tuple[int, int, int]:
    from easyanimate.models.text import TextEncoder
    text = TextEncoder.from_folder(folder, spec, device="cpu", dtype=torch.float32)
    return (shapes.count(load_transformer(folder, spec)), shapes.count(load_vae(folder, spec)),
            sum(shapes.count(e.model) for e in text.encoders))


@pytest.mark.parametrize("fixture,version", [("tiny_model_v51", "v5.1"), ("tiny_model_v51_original", "v5.1"),
                                             ("tiny_model_v5_original", "v5")])
def test_counts_from_configs_equal_the_loaded_models(request, fixture, version):
    folder = request.getfixturevalue(fixture)
    spec = load_model_spec(YAML[version])
    sizes = shapes.model_sizes(folder, spec)
    assert (sizes.transformer, sizes.vae, sizes.text_encoder_total) == _loaded_counts(folder, spec)
    assert len(sizes.text_encoders) == len(spec.text_encoders)


def test_published_v51_12b_shapes_count_about_12b_transformer_and_8b_qwen2_vl():
    spec = load_model_spec(YAML["v5.1"])
    sizes = shapes.model_sizes(REPO / "configs" / "shapes" / "v5.1-12b-control", spec)
    assert 11.5e9 < sizes.transformer < 12.1e9          # "12B": 48 MMDiT blocks of width 3072
    assert sizes.text_encoders[0][0] == "qwen2_vl" and 8.2e9 < sizes.text_encoders[0][1] < 8.4e9
    assert 0.1e9 < sizes.vae < 0.5e9


def test_missing_config_names_the_folder(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="transformer"):
        shapes.transformer_parameters(tmp_path, load_model_spec(YAML["v5.1"]))
