"""`easyanimate export`: a checkpoint's transformer as a folder diffusers (or EasyAnimate's layout) loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import EasyAnimateTransformer3DModel

from easyanimate.cli import main as cli
from easyanimate.training.checkpoint import Checkpointer
from easyanimate.training.export import export

REPO = Path(__file__).resolve().parents[2]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def trained_checkpoint(tiny_model_v51, tmp_path):
    """One optimizer step of the tiny V5.1 transformer under accelerate, then a checkpoint."""
    AcceleratorState._reset_state(True)
    accelerator = Accelerator(cpu=True)
    transformer = EasyAnimateTransformer3DModel.from_pretrained(tiny_model_v51 / "transformer")
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    sum(p.pow(2).sum() for p in model.parameters()).backward()
    optimizer.step()
    path = Checkpointer(tmp_path / "run").save(accelerator, 1, {"global_step": 1})
    yield path, accelerator.unwrap_model(model)
    AcceleratorState._reset_state(True)


def test_exported_folder_loads_with_from_pretrained_and_holds_the_trained_weights(trained_checkpoint, tmp_path):
    path, trained = trained_checkpoint
    assert cli(["export", str(path), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "diffusion_pytorch_model.safetensors").is_file()
    assert_same_weights(EasyAnimateTransformer3DModel.from_pretrained(tmp_path / "out"), trained)


def test_exported_transformer_runs_in_the_control_pipeline(trained_checkpoint, tiny_model_v51, tmp_path):
    from easyanimate.models.pipeline import MendedEasyAnimateControlPipeline
    transformer = EasyAnimateTransformer3DModel.from_pretrained(export(trained_checkpoint[0], tmp_path / "out"))
    pipe = MendedEasyAnimateControlPipeline.from_pretrained(tiny_model_v51, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    control = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0))
    frames = pipe(prompt="a dog runs", negative_prompt="blurry", num_frames=5, height=32, width=32,
                  control_video=control, ref_image=control[:, :, :1], num_inference_steps=2, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(1), output_type="pt").frames
    assert frames.shape == (1, 5, 3, 32, 32) and torch.isfinite(frames).all()


def test_original_layout_export_loads_back_through_the_original_layout_loader(trained_checkpoint, tmp_path):
    from easyanimate.models import load_model_spec
    from easyanimate.models.loading import load_transformer
    path, trained = trained_checkpoint
    export(path, tmp_path / "model" / "transformer", layout="original", dtype="bf16")
    keys = (tmp_path / "model" / "transformer" / "config.json").read_text()
    assert "add_ref_latent_in_control_model" in keys
    spec = load_model_spec(REPO / "configs" / "easyanimate_video_v5.1_magvit_qwen.yaml")
    loaded = load_transformer(tmp_path / "model", spec, layout="original")
    expected = {k: v.to(torch.bfloat16).float() for k, v in trained.state_dict().items()}
    assert all(torch.equal(v.float(), expected[k]) for k, v in loaded.state_dict().items())


def test_export_refuses_a_corrupted_checkpoint(trained_checkpoint, tmp_path):
    path, _ = trained_checkpoint
    (path / "model.safetensors").write_bytes(b"")
    assert cli(["export", str(path), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
