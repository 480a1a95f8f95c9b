"""A model folder that does not match its classes exactly never starts training: the load raises, naming the key.

Every case runs through ``load_components``, the trainer's first step after parsing flags, for both layouts.
"""

from __future__ import annotations

import pytest
import torch

from easyanimate.models import ConfigNotHonoured, StrictLoadError, load_components, load_model_spec

from model_helpers import YAML, copy_model, edit_config, edit_weights, train_config

LAYOUTS = ["diffusers", "original"]
BLOCK_KEY = {"diffusers": "transformer_blocks.0.attn1.add_q_proj.weight",
             "original": "transformer_blocks.0.attn2.to_q.weight"}


@pytest.fixture(params=LAYOUTS)
def v51_copy(request, tmp_path):
    """(layout, a writable copy of the tiny V5.1 folder in that layout)."""
    source = request.getfixturevalue("tiny_model_v51" if request.param == "diffusers" else "tiny_model_v51_original")
    return request.param, copy_model(source, tmp_path / "model")


def _load(folder, version="v5.1", *extra):
    return load_components(train_config(folder, version, *extra), load_model_spec(YAML[version]), device="cpu",
                           weight_dtype=torch.float32)


def test_a_removed_transformer_tensor_is_named(v51_copy):
    layout, folder = v51_copy
    edit_weights(folder / "transformer", lambda s: s.pop(BLOCK_KEY[layout]))
    with pytest.raises(StrictLoadError, match=r"missing from the files \(1\): transformer_blocks\.0\.attn1\."
                                              r"add_q_proj\.weight") as err:
        _load(folder)
    assert str(folder / "transformer") in str(err.value)


def test_a_renamed_transformer_tensor_is_named_both_ways(v51_copy):
    layout, folder = v51_copy
    edit_weights(folder / "transformer", lambda s: s.update(proj_renamed=s.pop("proj_out.weight")))
    with pytest.raises(StrictLoadError) as err:
        _load(folder)
    assert "missing from the files (1): proj_out.weight" in str(err.value)
    assert "in the files but not in the model (1): proj_renamed" in str(err.value)


def test_a_removed_vae_tensor_is_named(v51_copy):
    _, folder = v51_copy
    edit_weights(folder / "vae", lambda s: s.pop("decoder.conv_out.bias"))
    with pytest.raises(StrictLoadError, match=r"decoder\.conv_out\.bias"):
        _load(folder)


def test_a_reshaped_tensor_is_named_with_both_shapes(v51_copy):
    _, folder = v51_copy
    edit_weights(folder / "transformer", lambda s: s.update({"proj.weight": s["proj.weight"][:, :8].clone()}))
    with pytest.raises(StrictLoadError, match=r"proj\.weight \(32, 8, 2, 2\) vs \(32, 12, 2, 2\)"):
        _load(folder)


@pytest.mark.parametrize("component,key,value", [
    ("transformer", "swa_layers", [0]), ("transformer", "clip_channels", 8), ("transformer", "ref_channels", 4),
    ("transformer", "num_layer", 2), ("vae", "use_tiling", True), ("vae", "upcast_vae", True),
    ("vae", "use_gc_blocks", [True] * 4), ("vae", "latent_channel", 4)])
def test_a_config_key_that_cannot_be_honoured_is_named(v51_copy, component, key, value):
    """diffusers' from_pretrained would drop each of these with a warning and build a different model."""
    _, folder = v51_copy
    edit_config(folder / component, lambda c: c.update({key: value}))
    with pytest.raises(ConfigNotHonoured, match=f"'{key}'"):
        _load(folder)


@pytest.mark.parametrize("line,key", [("cache_mag_vae: true", "cache_mag_vae"),
                                      ("mini_batch_encoder: 4", "mini_batch_encoder"),
                                      ('time_position_encoding_type: "3d_rope"', "time_position_encoding_type")])
def test_the_model_yaml_is_checked_like_the_folder(v51_copy, tmp_path, line, key):
    """The YAML's kwargs override config.json (as in EasyAnimate), so they pass the same rules."""
    _, folder = v51_copy
    yaml = tmp_path / "model.yaml"
    yaml.write_text(YAML["v5.1"].read_text().replace(line, f"{key}: 8"))
    with pytest.raises(ConfigNotHonoured, match=f"'{key}'"):
        load_components(train_config(folder, "v5.1"), load_model_spec(yaml), device="cpu", weight_dtype=torch.float32)


def test_an_absent_original_key_takes_easyanimates_default(tiny_model_v51_original, tmp_path):
    """num_layers absent means the original class's 30 layers, so the 2-layer weights are refused."""
    folder = copy_model(tiny_model_v51_original, tmp_path / "model")
    edit_config(folder / "transformer", lambda c: c.pop("num_layers"))
    with pytest.raises(StrictLoadError, match=r"missing from the files \(\d+\): transformer_blocks\.10\."):
        _load(folder)


def test_unused_second_text_projection_of_an_original_v51_folder_is_dropped_by_rule(tiny_model_v51_original, tmp_path,
                                                                                    caplog):
    """EasyAnimate's class builds text_proj_t5 (4096 wide) by default; with one text encoder it is never used."""
    folder = copy_model(tiny_model_v51_original, tmp_path / "model")
    edit_config(folder / "transformer", lambda c: c.pop("text_embed_dim_t5"))
    edit_weights(folder / "transformer", lambda s: s.update({"text_proj_t5.weight": torch.zeros(32, 4096),
                                                             "text_proj_t5.bias": torch.zeros(32)}))
    caplog.set_level("INFO")
    parts = _load(folder)
    assert parts.transformer.text_proj_t5 is None
    assert "text_proj_t5.weight" in caplog.text and "dropped" in caplog.text


def test_a_text_encoder_tensor_removed_is_refused(tiny_model_v5, tmp_path):
    folder = copy_model(tiny_model_v5, tmp_path / "model")
    edit_weights(folder / "text_encoder_2", lambda s: s.pop(next(k for k in s if "layer_norm" in k)))
    with pytest.raises(StrictLoadError, match="text_encoder_2"):
        _load(folder, "v5")


def test_extra_transformer_weights_load_strictly_in_either_naming(tiny_model_v51, tiny_model_v51_original, tmp_path):
    good = next((tiny_model_v51_original / "transformer").glob("*.safetensors"))
    parts = _load(tiny_model_v51, "v5.1", "--transformer_path", str(good))
    assert parts.transformer.transformer_blocks[0].attn1.add_q_proj.weight.abs().sum() > 0
    partial = copy_model(tiny_model_v51_original / "transformer", tmp_path / "partial")
    edit_weights(partial, lambda s: s.pop("norm_final.weight"))
    with pytest.raises(StrictLoadError, match="norm_final.weight"):
        _load(tiny_model_v51, "v5.1", "--transformer_path", str(next(partial.glob("*.safetensors"))))
