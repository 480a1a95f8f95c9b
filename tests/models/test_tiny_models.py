"""Tiny model folders: built offline in seconds, loaded strictly, and wired the way the trainer uses them."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from easyanimate.models import detect_layout, load_components, load_model_spec
from easyanimate.models.tiny import main as make_tiny_main
from easyanimate.training.loss_types import LOSS_TYPES

from model_helpers import LOSS, YAML, train_config


def _components(folder, version):
    return load_components(train_config(folder, version), load_model_spec(YAML[version]), device="cpu",
                           weight_dtype=torch.float32, scheduler=LOSS_TYPES[LOSS[version]].scheduler)


def test_v51_folder_loads_and_the_transformer_takes_noisy_control_and_ref(tiny_model_v51):
    parts = _components(tiny_model_v51, "v5.1")
    assert parts.layout == "diffusers" and detect_layout(tiny_model_v51) == "diffusers"
    assert isinstance(parts.noise_scheduler, FlowMatchEulerDiscreteScheduler)
    latent = parts.vae.config.latent_channels
    assert parts.transformer.config.in_channels == 3 * latent
    assert all(p.dtype == torch.float32 for p in parts.transformer.parameters())
    assert not any(p.requires_grad for p in parts.vae.parameters())
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    latents = parts.vae.encode(video).latent_dist.mode()
    assert latents.shape == (1, latent, 3, 4, 4)
    text = parts.text_encoder.encode(["a dog runs in the park"], device="cpu")
    assert text.encoder_hidden_states_t5 is None
    out = parts.transformer(latents, torch.tensor([500.0]), encoder_hidden_states=text.encoder_hidden_states,
                            control_latents=torch.cat([latents, torch.zeros_like(latents)], 1)).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()


def test_v5_folder_has_two_text_streams_and_a_ddpm_schedule(tiny_model_v5):
    parts = _components(tiny_model_v5, "v5")
    assert isinstance(parts.noise_scheduler, DDPMScheduler)
    assert parts.noise_scheduler.config.prediction_type in ("epsilon", "v_prediction")
    assert parts.transformer.config.in_channels == 2 * parts.vae.config.latent_channels
    text = parts.text_encoder.encode(["a cat walks", "red car"], device="cpu")
    assert text.encoder_hidden_states.shape == (2, 256, 32)
    assert text.encoder_hidden_states_t5.shape == (2, 256, 48)
    latents = torch.randn(2, 4, 2, 4, 4)
    out = parts.transformer(latents, torch.tensor([10.0, 900.0]), encoder_hidden_states=text.encoder_hidden_states,
                            encoder_hidden_states_t5=text.encoder_hidden_states_t5,
                            control_latents=torch.randn_like(latents)).sample
    assert torch.isfinite(out).all()


def test_qwen_prompts_use_the_chat_template_right_padding_and_the_penultimate_layer(tiny_model_v51):
    parts = _components(tiny_model_v51, "v5.1")
    (qwen,) = parts.text_encoder.encoders
    tokens = qwen._tokenize(["a cat walks", ""])
    assert tokens.input_ids.shape == (2, 256)
    decoded = qwen.tokenizer.decode(tokens.input_ids[0][tokens.attention_mask[0].bool()])
    assert decoded.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert decoded.endswith("<|im_start|>user\na cat walks<|im_end|>\n<|im_start|>assistant\n")
    assert tokens.attention_mask[:, 0].all() and not tokens.attention_mask[:, -1].any()  # right padding
    text = parts.text_encoder.encode(["a cat walks", ""], device="cpu")
    hidden = qwen.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                        output_hidden_states=True).hidden_states
    assert torch.equal(text.encoder_hidden_states, hidden[-2])
    assert not torch.equal(hidden[-2], hidden[-1])
    assert torch.equal(text.encoder_attention_mask, tokens.attention_mask)


def test_bert_and_t5_prompts_have_no_special_tokens(tiny_model_v5):
    parts = _components(tiny_model_v5, "v5")
    for encoder in parts.text_encoder.encoders:
        ids = encoder._tokenize(["a cat walks"]).input_ids[0].tolist()
        specials = set(encoder.tokenizer.all_special_ids) - {encoder.tokenizer.pad_token_id}
        assert len(ids) == 256 and not specials & set(ids)
        assert encoder.tokenizer.decode([i for i in ids if i != encoder.tokenizer.pad_token_id]).replace(
            " ", "") == "acatwalks"


def test_make_tiny_model_command_writes_a_complete_folder_in_seconds(tmp_path):
    import time
    start = time.monotonic()
    assert make_tiny_main(["--version", "v5.1", str(tmp_path / "m")]) == 0
    assert time.monotonic() - start < 30
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert name in index and (tmp_path / "m" / name).is_dir()


def test_make_tiny_model_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        make_tiny_main(["--version", "v5", str(tmp_path / "x")])
