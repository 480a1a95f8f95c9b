"""The model YAML as typed data: which encoders each version has, and errors that name the key."""

from __future__ import annotations

import pytest

from easyanimate.models import ModelFolderError, ModelSpecError, detect_layout, load_model_spec

from model_helpers import YAML


def test_v51_yaml_means_one_qwen_encoder_with_mask_and_reference():
    spec = load_model_spec(YAML["v5.1"])
    assert [s.kind for s in spec.text_encoders] == ["qwen2_vl"]
    assert spec.enable_text_attention_mask and spec.add_ref_latent_in_control_model
    assert spec.vae_kwargs["mini_batch_encoder"] == 4


def test_v5_yaml_means_bert_then_t5_without_mask():
    spec = load_model_spec(YAML["v5"])
    assert [(s.kind, s.encoder_subfolder, s.tokenizer_subfolder) for s in spec.text_encoders] == [
        ("bert", "text_encoder", "tokenizer"), ("t5", "text_encoder_2", "tokenizer_2")]
    assert not spec.enable_text_attention_mask and not spec.add_ref_latent_in_control_model


def test_unknown_yaml_section_is_an_error_naming_it(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("transformer_additional_kwargs: {}\nvae_kwarg: {}\n")
    with pytest.raises(ModelSpecError, match="vae_kwarg"):
        load_model_spec(path)


def test_layout_detection_needs_transformer_vae_and_weights(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="vae/config.json"):
        detect_layout(tmp_path)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="holds no weights"):
        detect_layout(tmp_path)


@pytest.mark.parametrize("names,with_index,layout", [
    (["transformer_blocks.0.attn2.to_q.weight"], True, "original"),  # a Hub copy of the original may carry one
    (["transformer_blocks.0.attn1.add_q_proj.weight"], False, "diffusers"),
    (["proj_out.weight"], True, "diffusers"),  # names say nothing: model_index.json decides
    (["proj_out.weight"], False, "original")])
def test_layout_is_read_from_the_transformers_tensor_names(tmp_path, names, with_index, layout):
    import torch
    from safetensors.torch import save_file
    for sub in ("transformer", "vae"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text("{}")
    save_file({n: torch.zeros(1) for n in names}, tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    if with_index:
        (tmp_path / "model_index.json").write_text("{}")
    assert detect_layout(tmp_path) == layout
