"""output_dir/pipeline: the base model with the trained transformer in it, loadable in one call, base parts linked."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from easyanimate.models import ModelFolderError, load_components, load_model_spec, load_transformer
from easyanimate.models.pipeline import MendedEasyAnimateControlPipeline
from easyanimate.models.pipeline_folder import write_pipeline_folder

from model_helpers import YAML, copy_model, train_config


def _trained(base, version, out):
    """A stand-in for a trained transformer: the base one with proj_out changed, saved as export writes it."""
    transformer = load_transformer(base, load_model_spec(YAML[version]))
    with torch.no_grad():
        transformer.proj_out.weight.add_(1.0)
    transformer.save_pretrained(out)
    return out, transformer.proj_out.weight.detach().clone()


def _linked_into(folder, base):
    return os.path.islink(folder) and os.path.realpath(folder).startswith(os.path.realpath(base))


@pytest.mark.parametrize("fixture", ["tiny_model_v51", "tiny_model_v51_original"])
def test_v51_folder_loads_in_one_call_and_generates(fixture, request, tmp_path):
    base = request.getfixturevalue(fixture)
    transformer, trained_weight = _trained(base, "v5.1", tmp_path / "transformer")
    out = write_pipeline_folder(tmp_path / "pipeline", transformer=transformer, base=base,
                                spec=load_model_spec(YAML["v5.1"]))
    pipe = MendedEasyAnimateControlPipeline.from_pretrained(out)
    assert torch.equal(pipe.transformer.proj_out.weight, trained_weight)
    # the VAE the run trained with (an original folder's absent keys mean EasyAnimate's defaults)
    expected_vae = load_components(train_config(base, "v5.1"), load_model_spec(YAML["v5.1"]), device="cpu",
                                   weight_dtype=torch.float32).vae
    assert pipe.vae.config.scaling_factor == expected_vae.config.scaling_factor
    assert all(torch.equal(a, b) for a, b in zip(pipe.vae.state_dict().values(), expected_vae.state_dict().values()))
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"):
        assert _linked_into(out / part, base), part  # linked, not copied
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(prompt="a dog", negative_prompt="blurry", num_frames=5, height=32, width=32,
                  control_video=torch.rand(1, 3, 5, 32, 32), num_inference_steps=2, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert frames.shape == (1, 5, 3, 32, 32) and torch.isfinite(frames).all()


def test_v5_folder_is_in_the_original_layout_and_loads_as_a_model_folder(tiny_model_v5, tmp_path):
    transformer, trained_weight = _trained(tiny_model_v5, "v5", tmp_path / "transformer")
    out = write_pipeline_folder(tmp_path / "pipeline", transformer=transformer, base=tiny_model_v5,
                                spec=load_model_spec(YAML["v5"]), take_transformer=True)
    assert not (out / "model_index.json").exists() and not transformer.exists()
    parts = load_components(train_config(out, "v5"), load_model_spec(YAML["v5"]), device="cpu",
                            weight_dtype=torch.float32)
    assert parts.layout == "original"
    assert torch.equal(parts.transformer.proj_out.weight, trained_weight)
    for part in ("text_encoder_2", "tokenizer_2", "vae/diffusion_pytorch_model.safetensors"):
        target = out / part
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        assert files and all(_linked_into(f, tiny_model_v5) for f in files), part


def test_a_base_without_a_scheduler_is_named_not_half_written(tiny_model_v51, tmp_path):
    base = copy_model(tiny_model_v51, tmp_path / "base")
    shutil.rmtree(base / "scheduler")
    transformer, _ = _trained(base, "v5.1", tmp_path / "transformer")
    with pytest.raises(ModelFolderError, match="scheduler"):
        write_pipeline_folder(tmp_path / "pipeline", transformer=transformer, base=base,
                              spec=load_model_spec(YAML["v5.1"]))
    assert not (tmp_path / "pipeline").exists()
