"""Validation videos: every --validation_steps optimizer steps (and every --validation_epochs epochs), rank 0
generates one video per --validation_prompts entry with its --validation_paths control video, through diffusers'
control pipeline (mended, see easyanimate/models/pipeline.py), into output_dir/sample/. Other ranks wait.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler

from easyanimate import distributed
from easyanimate.config import TrainConfig
from easyanimate.data.transforms import resize_clip
from easyanimate.data.video import VideoClip

logger = logging.getLogger(__name__)

NEGATIVE_PROMPT = "blurring, mutation, deformation, distortion, dark and solid, comics, text subtitles, line art"
INFERENCE_STEPS = 25


def read_control_video(path: str, frames: int, size: int) -> torch.Tensor:
    """The first 4k+1 <= frames frames, centre-cropped and resized to size^2: (1, 3, F, size, size) in [0, 1]."""
    with VideoClip(path) as clip:
        count = min(frames, len(clip))
        count = (count - 1) // 4 * 4 + 1
        pixels = resize_clip(clip.get(list(range(count))), size, size)
    return (pixels.float() / 255.0).permute(1, 0, 2, 3).unsqueeze(0)


class Validator:
    def __init__(self, cfg: TrainConfig, components):
        self.cfg, self.components = cfg, components
        self.enabled = bool(cfg.validation_prompts)
        if self.enabled and len(components.text_encoder.encoders) != 1:
            logger.warning("validation skipped: diffusers' control pipeline takes one text encoder, this model "
                           "has %d (V5). Validate V5 models with EasyAnimate's predict scripts after "
                           "`easyanimate export --layout original`.", len(components.text_encoder.encoders))
            self.enabled = False

    def due(self, step: int, epoch_finished: int | None) -> bool:
        if not self.enabled:
            return False
        by_epoch = epoch_finished is not None and epoch_finished % self.cfg.validation_epochs == 0
        return step % self.cfg.validation_steps == 0 or by_epoch

    def run(self, model: torch.nn.Module, step: int, interrupted: Callable[[], bool] = lambda: False) -> None:
        """Rank 0 writes the videos while the others wait; ``interrupted`` (a preemption signal) is checked
        before each prompt, so a signal cuts validation short and the save follows at once."""
        if distributed.is_main():
            self._generate(model, step, interrupted)
        distributed.barrier()

    def _generate(self, model: torch.nn.Module, step: int, interrupted: Callable[[], bool]) -> None:
        from easyanimate.models.pipeline import MendedEasyAnimateControlPipeline
        import imageio.v3 as iio

        cfg, parts = self.cfg, self.components
        scheduler_cls = type(parts.noise_scheduler) if cfg.loss_type == "flow" else DDIMScheduler
        encoder = parts.text_encoder.encoders[0]
        pipe = MendedEasyAnimateControlPipeline(
            vae=parts.vae, text_encoder=encoder.model, tokenizer=encoder.tokenizer, transformer=model,
            scheduler=scheduler_cls.from_config(parts.noise_scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        out = Path(cfg.output_dir) / "sample"
        out.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        model.eval()
        paths = cfg.validation_paths or [None] * len(cfg.validation_prompts)
        for index, (prompt, path) in enumerate(zip(cfg.validation_prompts, paths)):
            if interrupted():
                logger.warning("validation at step %d stopped after %d of %d videos: preemption signal", step,
                               index, len(paths))
                break
            control = read_control_video(path, cfg.video_sample_n_frames, cfg.video_sample_size) if path else None
            frames = control.shape[2] if control is not None else cfg.video_sample_n_frames
            with torch.no_grad():
                video = pipe(prompt=prompt, negative_prompt=NEGATIVE_PROMPT, num_frames=frames,
                             height=cfg.video_sample_size, width=cfg.video_sample_size, control_video=control,
                             num_inference_steps=INFERENCE_STEPS, generator=torch.Generator().manual_seed(cfg.seed),
                             output_type="pt").frames[0]
            target = out / f"step-{step}-{index}.mp4"
            array = (video.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            iio.imwrite(target, np.ascontiguousarray(array), fps=8, codec="libx264", plugin="pyav")
            logger.info("validation video %s (%s)", target, prompt)
        model.train(was_training)
