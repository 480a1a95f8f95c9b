"""The preflight's model-folder check (models/check.py): as strict as loading, from the safetensors headers only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from easyanimate.models.check import check_model_folder
from easyanimate.models.weights import StrictLoadError

REPO = Path(__file__).resolve().parents[2]
V51 = REPO / "configs" / "easyanimate_video_v5.1_magvit_qwen.yaml"
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_a_sound_folder_reports_its_layout_and_the_parameters_it_stores(layout, tiny_model_v51,
                                                                      tiny_model_v51_original):
    folder = tiny_model_v51 if layout == "diffusers" else tiny_model_v51_original
    found = check_model_folder(folder, V51)
    stored = sum(t.numel() for path in (folder / "transformer").glob("*.safetensors")
                 for t in load_file(path).values())
    assert found == {"layout": layout, "params": stored}


def test_a_tensor_of_the_wrong_shape_is_named(tiny_model_v51, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_v51, folder)
    state = load_file(folder / "transformer" / WEIGHTS)
    name = next(key for key, tensor in state.items() if tensor.dim() == 2)
    state[name] = state[name][:, :-1].contiguous()
    save_file(state, folder / "transformer" / WEIGHTS)
    with pytest.raises(StrictLoadError, match=name.replace(".", r"\.")):
        check_model_folder(folder, V51)
