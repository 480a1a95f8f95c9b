"""--init_from_base_model: a control model starts from a base model (T2V, InP) whose patch embedding takes other
input channels; only that tensor is adapted (zero-filled or cut), logged; everything else stays strict."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from easyanimate.config import ConfigError
from easyanimate.models import StrictLoadError, load_components, load_model_spec
from easyanimate.training.build import check_channels

from model_helpers import YAML, copy_model, edit_config, edit_weights, train_config


def _base_model(source, folder, channels: int):
    """The tiny V5.1 folder turned into a base model whose transformer takes ``channels`` input channels."""
    copy_model(source, folder)
    edit_config(folder / "transformer", lambda c: c.update(in_channels=channels))
    edit_weights(folder / "transformer", lambda s: s.update(
        {"proj.weight": torch.randn(s["proj.weight"].shape[0], channels, *s["proj.weight"].shape[2:])}))
    return folder


def _load(folder, *extra):
    cfg = train_config(folder, "v5.1", "--train_mode=control_ref", *extra)
    return cfg, load_components(cfg, load_model_spec(YAML["v5.1"]), device="cpu", weight_dtype=torch.float32)


def _weights(folder):
    return load_file(next((folder / "transformer").glob("*.safetensors")))


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_a_t2v_base_model_gets_zero_filled_control_and_ref_channels(layout, request, tmp_path, caplog):
    source = request.getfixturevalue("tiny_model_v51" if layout == "diffusers" else "tiny_model_v51_original")
    folder = _base_model(source, tmp_path / "base", 4)  # noisy latents only, as a text-to-video model
    base = _weights(folder)
    caplog.set_level("WARNING")
    _, parts = _load(folder, "--init_from_base_model")
    weight = parts.transformer.proj.weight
    assert parts.transformer.config.in_channels == 12 and weight.shape == (32, 12, 2, 2)
    assert torch.equal(weight[:, :4], base["proj.weight"]) and not weight[:, 4:].any()
    assert "proj.weight (32, 4, 2, 2) -> (32, 12, 2, 2) (channels 4..11 zero-filled)" in caplog.text
    assert torch.equal(parts.transformer.proj_out.weight, base["proj_out.weight"])  # the rest unchanged


def test_an_inpaint_base_model_with_more_channels_is_cut(tiny_model_v51, tmp_path, caplog):
    folder = _base_model(tiny_model_v51, tmp_path / "base", 16)
    base = _weights(folder)
    caplog.set_level("WARNING")
    _, parts = _load(folder, "--init_from_base_model")
    assert torch.equal(parts.transformer.proj.weight, base["proj.weight"][:, :12])
    assert "(channels 12..15 cut off)" in caplog.text


def test_without_the_flag_the_refusals_name_it(tiny_model_v51, tmp_path):
    folder = _base_model(tiny_model_v51, tmp_path / "base", 4)
    cfg, parts = _load(folder)  # a consistent T2V folder loads as what it is...
    with pytest.raises(ConfigError, match="--init_from_base_model"):  # ...and cannot train control_ref
        check_channels(parts.transformer, parts.vae, True, cfg)
    edit_config(folder / "transformer", lambda c: c.update(in_channels=12))  # config and weights disagree
    with pytest.raises(StrictLoadError, match=r"proj\.weight \(32, 4, 2, 2\) vs \(32, 12, 2, 2\).*"
                                              r"--init_from_base_model"):
        _load(folder)


def test_the_flag_adapts_nothing_but_the_patch_embedding(tiny_model_v51, tmp_path):
    folder = _base_model(tiny_model_v51, tmp_path / "base", 4)
    edit_weights(folder / "transformer", lambda s: s.update({"proj_out.weight": s["proj_out.weight"][:, :8].contiguous()}))
    with pytest.raises(StrictLoadError, match=r"proj_out\.weight"):
        _load(folder, "--init_from_base_model")
