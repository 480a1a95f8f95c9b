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


def test_layout_detection_needs_transformer_and_vae(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="vae/config.json"):
        detect_layout(tmp_path)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    assert detect_layout(tmp_path) == "original"
    (tmp_path / "model_index.json").write_text("{}")
    assert detect_layout(tmp_path) == "diffusers"
