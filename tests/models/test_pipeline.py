"""A tiny V5.1 model folder generates a video in diffusers' control pipeline (mended for diffusers#13638)."""

from __future__ import annotations

import pytest
import torch
from diffusers import EasyAnimateControlPipeline

from easyanimate.models.pipeline import MendedEasyAnimateControlPipeline

FRAMES, SIZE = 5, 32


def _inputs():
    generator = torch.Generator().manual_seed(0)
    control = torch.rand(1, 3, FRAMES, SIZE, SIZE, generator=generator)
    ref = torch.rand(1, 3, 1, SIZE, SIZE, generator=generator)
    return dict(prompt="a dog runs in the park", negative_prompt="blurry", num_frames=FRAMES, height=SIZE,
                width=SIZE, control_video=control, ref_image=ref, num_inference_steps=2, guidance_scale=2.0,
                generator=torch.Generator().manual_seed(1), output_type="pt")


def test_mended_pipeline_generates_a_finite_video_with_control_and_reference(tiny_model_v51):
    pipe = MendedEasyAnimateControlPipeline.from_pretrained(tiny_model_v51)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(**_inputs()).frames
    assert frames.shape == (1, FRAMES, 3, SIZE, SIZE)
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1


def test_released_pipeline_still_fails_so_the_mend_is_still_needed(tiny_model_v51):
    """When this starts failing, diffusers has fixed #13638: drop easyanimate/models/pipeline.py."""
    pipe = EasyAnimateControlPipeline.from_pretrained(tiny_model_v51)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(TypeError, match="text_encoder_index"):
        pipe(**_inputs())
