"""EasyAnimate's original layout loads into diffusers' classes and reproduces EasyAnimate's own outputs.

Ground truth: tests/fixtures/easyanimate_original_layout (tiny models saved, and outputs computed, by
EasyAnimate's own classes). Measured on this machine: running EasyAnimate's own classes here gives outputs
bitwise equal to ours; the stored outputs differ from both by float32 noise of the machine that recorded them
(transformer 3.6e-7 / 4.8e-7, VAE latent 8.6e-7, decoded 5.1e-6), so the VAE is checked bitwise against
diffusers' own loading of the same weights and within that noise against the recording.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from diffusers import AutoencoderKLMagvit, EasyAnimateTransformer3DModel
from safetensors.torch import load_file

from easyanimate.models import load_components, load_model_spec, load_transformer, load_vae
from easyanimate.models.convert import main as convert_main
from easyanimate.models.original import TRANSFORMER_RENAMES, save_transformer_original, to_diffusers_layout, \
    to_original_layout
from easyanimate.models.pipeline import MendedEasyAnimateControlPipeline

from model_helpers import FIXTURES, YAML, copy_model, train_config



def _forward(transformer, ref):
    transformer.eval()
    with torch.no_grad():
        return transformer(ref["hidden_states"], ref["timestep"], encoder_hidden_states=ref["encoder_hidden_states"],
                           encoder_hidden_states_t5=ref.get("encoder_hidden_states_t5"),
                           control_latents=ref["control_latents"]).sample


@pytest.mark.parametrize("version", ["v5.1", "v5"])
def test_original_transformer_reproduces_easyanimates_output(version):
    transformer = load_transformer(FIXTURES / version, load_model_spec(YAML[version]), layout="original").eval()
    ref = load_file(FIXTURES / version / "transformer_reference.safetensors")
    diff = (_forward(transformer, ref) - ref["expected_output"]).abs().max().item()
    assert diff < 1e-6, diff


def test_plain_diffusers_loading_of_the_original_layout_is_silently_wrong():
    """The trap our loader exists for: diffusers only warns, leaves the text attention uninitialised."""
    transformer, info = EasyAnimateTransformer3DModel.from_pretrained(
        FIXTURES / "v5.1" / "transformer", low_cpu_mem_usage=False, output_loading_info=True)
    assert len(info["missing_keys"]) == 24  # no exception: only a logged warning
    ref = load_file(FIXTURES / "v5.1" / "transformer_reference.safetensors")
    assert not torch.allclose(_forward(transformer, ref), ref["expected_output"], atol=1e-2)  # random or NaN


def test_original_vae_matches_diffusers_bitwise_and_easyanimates_recording():
    vae = load_vae(FIXTURES / "v5.1", load_model_spec(YAML["v5.1"]), layout="original")
    plain = AutoencoderKLMagvit.from_pretrained(FIXTURES / "v5.1" / "vae").eval()  # identical keys for the VAE
    ref = load_file(FIXTURES / "v5.1" / "vae_reference.safetensors")
    with torch.no_grad():
        latent = vae.encode(ref["video"]).latent_dist.mode()
        decoded = vae.decode(ref["expected_latent_mode"]).sample
        assert torch.equal(latent, plain.encode(ref["video"]).latent_dist.mode())
        assert torch.equal(decoded, plain.decode(ref["expected_latent_mode"]).sample)
    assert (latent - ref["expected_latent_mode"]).abs().max().item() < 2e-6
    assert (decoded - ref["expected_decoded"]).abs().max().item() < 2e-5


def test_renames_are_the_six_text_stream_tensors_and_invert_exactly(tiny_model_v51):
    state = EasyAnimateTransformer3DModel.from_pretrained(tiny_model_v51 / "transformer").state_dict()
    original = to_original_layout(state)
    renamed = set(original) - set(state)
    assert len(renamed) == 2 * len(TRANSFORMER_RENAMES) * 2  # 2 blocks x 6 modules x (weight, bias)
    assert all(".attn2." in k for k in renamed)
    assert to_diffusers_layout(original).keys() == state.keys()
    assert all(original[to_original_layout({k: 0}).popitem()[0]] is v for k, v in state.items())


@pytest.mark.parametrize("version", ["v5.1", "v5"])
def test_tiny_original_layout_is_the_same_model_as_the_diffusers_one(version, request):
    original = request.getfixturevalue("tiny_model_v51_original" if version == "v5.1" else "tiny_model_v5_original")
    diffusers_folder = request.getfixturevalue("tiny_model_v51" if version == "v5.1" else "tiny_model_v5")
    spec = load_model_spec(YAML[version])
    parts = load_components(train_config(original, version), spec, device="cpu", weight_dtype=torch.float32)
    reference = load_transformer(diffusers_folder, spec)
    assert parts.layout == "original" and not (original / "model_index.json").exists()
    assert dict(parts.transformer.config) == dict(reference.config)
    expected = reference.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in parts.transformer.state_dict().items())
    assert parts.text_encoder.encode(["a cat"], device="cpu").encoder_hidden_states.shape[-1] == 32


def test_convert_model_writes_a_diffusers_folder_that_loads_without_warnings(tiny_model_v51_original, tmp_path, caplog):
    out = tmp_path / "converted"
    assert convert_main([str(tiny_model_v51_original), str(out), "--config_path", str(YAML["v5.1"])]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert {k for k in index if not k.startswith("_")} == {"transformer", "vae", "text_encoder", "tokenizer",
                                                           "scheduler"}
    caplog.set_level(logging.WARNING)
    transformer, info = EasyAnimateTransformer3DModel.from_pretrained(out / "transformer", output_loading_info=True)
    _, vae_info = AutoencoderKLMagvit.from_pretrained(out / "vae", output_loading_info=True)
    assert not any(info[k] or vae_info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    pipe = MendedEasyAnimateControlPipeline.from_pretrained(out)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    reference = load_transformer(tiny_model_v51_original, load_model_spec(YAML["v5.1"]))
    expected = reference.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in pipe.transformer.state_dict().items())


def test_convert_model_keeps_both_text_encoders_of_v5(tiny_model_v5_original, tmp_path):
    out = tmp_path / "converted"
    assert convert_main([str(tiny_model_v5_original), str(out)]) == 0  # encoders read from the folder
    for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"):
        assert (out / name).is_dir()
    parts = load_components(train_config(out, "v5"), load_model_spec(YAML["v5"]), device="cpu",
                            weight_dtype=torch.float32)
    assert parts.layout == "diffusers" and parts.transformer.text_proj_t5 is not None


def test_a_changed_transformer_exported_to_the_original_layout_loads_back_exactly(tiny_model_v51_original, tmp_path):
    """What ``easyanimate export --layout original`` relies on: save_transformer_original is load's inverse."""
    spec = load_model_spec(YAML["v5.1"])
    trained = load_transformer(tiny_model_v51_original, spec)
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(0.01)
    folder = copy_model(tiny_model_v51_original, tmp_path / "exported")
    shutil.rmtree(folder / "transformer")
    save_transformer_original(trained, folder / "transformer")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    assert config["add_ref_latent_in_control_model"] is True and config["text_embed_dim_t5"] is None
    reloaded = load_transformer(folder, spec, layout="original")
    expected = trained.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in reloaded.state_dict().items())
