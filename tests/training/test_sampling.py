"""Validation's sampler: on V5.1 it is diffusers' (mended) control pipeline, on V5 it runs both text encoders."""

import pytest
import torch
from diffusers import DDIMScheduler

from easyanimate.config import TrainConfig
from easyanimate.models import load_components, load_model_spec
from easyanimate.models.pipeline import MendedEasyAnimateControlPipeline
from easyanimate.training import sampling
from easyanimate.training.loss_types import LOSS_TYPES
from trainer_runs import CONFIGS

pytestmark = pytest.mark.integration


def components(folder, yaml, loss_type):
    cfg = TrainConfig(pretrained_model_name_or_path=str(folder), config_path=str(CONFIGS / yaml))
    return load_components(cfg, load_model_spec(cfg.config_path), device="cpu", weight_dtype=torch.float32,
                           scheduler=LOSS_TYPES[loss_type].scheduler)


def inputs(frames=5, size=32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=generator), torch.rand(1, 3, 1, size, size,
                                                                                generator=generator)


def test_on_v51_it_reproduces_the_mended_diffusers_pipeline(tiny_model_v51):
    parts = components(tiny_model_v51, "easyanimate_video_v5.1_magvit_qwen.yaml", "flow")
    control, ref = inputs()
    encoder = parts.text_encoder.encoders[0]
    pipe = MendedEasyAnimateControlPipeline(vae=parts.vae, text_encoder=encoder.model, tokenizer=encoder.tokenizer,
                                            transformer=parts.transformer, scheduler=parts.noise_scheduler)
    pipe.set_progress_bar_config(disable=True)
    common = dict(prompt="a red ball", negative_prompt="blurry", num_frames=5, height=32, width=32)
    want = pipe(**common, control_video=control, ref_image=ref, num_inference_steps=3, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(7), output_type="pt").frames[0]
    got = sampling.sample(parts.transformer, parts.vae, parts.noise_scheduler, parts.text_encoder, **common,
                          control=control, ref=ref, uses_ref=True, steps=3, guidance_scale=3.0,
                          generator=torch.Generator().manual_seed(7))
    assert got.shape == (5, 3, 32, 32)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_on_v5_both_text_encoders_and_the_control_video_shape_the_video(tiny_model_v5):
    parts = components(tiny_model_v5, "easyanimate_video_v5_magvit_multi_text_encoder.yaml", "ddpm")
    assert len(parts.text_encoder.encoders) == 2
    scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)
    control, _ = inputs()

    def run(prompt, control):
        return sampling.sample(parts.transformer, parts.vae, scheduler, parts.text_encoder, prompt=prompt,
                               negative_prompt="blurry", num_frames=5, height=32, width=32, control=control,
                               uses_ref=False, steps=2, generator=torch.Generator().manual_seed(0))

    video = run("a red ball", control)
    assert video.shape == (5, 3, 32, 32) and torch.isfinite(video).all()
    assert not torch.equal(video, run("a blue cube", control))
    assert not torch.equal(video, run("a red ball", 1 - control))
