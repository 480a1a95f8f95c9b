"""Validation videos: every --validation_steps optimizer steps (and every --validation_epochs epochs), rank 0
generates one video per --validation_prompts entry with its --validation_paths control video and writes it side by
side with its conditions, control | reference image (control_ref) | generated, to
output_dir/sample/step-STEP-INDEX.mp4, and sends it to the trackers. Other ranks wait.

The control video is read as training reads it (``video_sample_n_frames`` frames ``video_sample_stride`` apart,
from the start of the central window). For control_ref the reference image is the matching
--validation_ref_paths entry, else the first of those frames of the training video whose control video this is;
otherwise the reference slot stays empty, as in the pipeline without ``ref_image``. Sampling is
``sampling.sample`` (diffusers' control pipeline step for step; it also runs V5's two text encoders).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from easyanimate import distributed
from easyanimate.config import TrainConfig
from easyanimate.data.frames import select_frame_indices, trim_to_interval
from easyanimate.data.metadata import load_metadata
from easyanimate.data.transforms import resize_clip
from easyanimate.data.video import VideoClip, read_image
from easyanimate.training import sampling

logger = logging.getLogger(__name__)

NEGATIVE_PROMPT = "blurring, mutation, deformation, distortion, dark and solid, comics, text subtitles, line art"
INFERENCE_STEPS = 25
GUIDANCE_SCALE = 6.0
FPS = 8
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def control_indices(length: int, frames: int, stride: int) -> list[int]:
    """Training's frame selection (start of the central window), trimmed to 4k+1 frames."""
    indices = select_frame_indices(length, frames, stride, u=0.0)
    return indices[: trim_to_interval(len(indices))]


def read_frames(path: str, indices: list[int] | None, size: int) -> torch.Tensor:
    """The frames at ``indices`` of a video (or an image), centre-cropped to size^2: (1, 3, F, size, size) in [0, 1]."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        pixels = torch.from_numpy(read_image(path))
    else:
        with VideoClip(path) as clip:
            pixels = clip.get(indices or [0])
    pixels = resize_clip(pixels, size, size)
    return (pixels.float() / 255.0).permute(1, 0, 2, 3).unsqueeze(0)


def side_by_side(panels: list[torch.Tensor]) -> np.ndarray:
    """Panels (1, 3, F or 1, H, W) in [0, 1], left to right; a one-frame panel (the reference image) is held
    for every frame. Returns (F, H, W x panels, 3) uint8 for the video writer."""
    frames = max(p.shape[2] for p in panels)
    held = [p.expand(-1, -1, frames, -1, -1) if p.shape[2] == 1 else p for p in panels]
    video = torch.cat([p[0].float().cpu() for p in held], dim=-1)  # (3, F, H, W x n)
    return (video.permute(1, 2, 3, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def training_references(cfg: TrainConfig) -> dict[str, str]:
    """Control video path -> its training video, from the metadata (to find a default reference image)."""
    samples = load_metadata(cfg.train_data_meta, cfg.train_data_dir)
    return {str(Path(s.control_file_path).resolve()): s.file_path for s in samples if s.data_type == "video"}


def send_to_trackers(trackers, name: str, path: Path, frames: np.ndarray, prompt: str, step: int) -> None:
    """wandb gets the mp4; tensorboard (no mp4 support without moviepy) an image of the first, middle and last
    frames; other trackers nothing (the mp4 is in output_dir/sample/)."""
    sheet = np.concatenate([frames[0], frames[len(frames) // 2], frames[-1]], axis=0)
    for tracker in trackers:
        if tracker.name == "wandb":
            import wandb
            tracker.run.log({name: wandb.Video(str(path), caption=prompt, format="mp4")}, step=step)
        elif tracker.name == "tensorboard":
            tracker.log_images({name: sheet[None]}, step=step, dataformats="NHWC")


class Validator:
    def __init__(self, cfg: TrainConfig, components, scheduler_cls: type):
        self.cfg, self.components = cfg, components
        self.scheduler_cls = scheduler_cls  # from the --loss_type table
        self.enabled = bool(cfg.validation_prompts)
        self.uses_ref = cfg.train_mode == "control_ref"
        self.reference_videos: dict[str, str] | None = None  # read from the metadata when first needed

    def due(self, step: int, epoch_finished: int | None) -> bool:
        if not self.enabled:
            return False
        by_epoch = epoch_finished is not None and epoch_finished % self.cfg.validation_epochs == 0
        return step % self.cfg.validation_steps == 0 or by_epoch

    def run(self, run, step: int, interrupted: Callable[[], bool] = lambda: False) -> None:
        """Rank 0 writes the videos while the others wait; ``interrupted`` (a preemption signal) is checked
        before each prompt, so a signal cuts validation short and the save follows at once."""
        if distributed.is_main():
            self._generate(run.accelerator.unwrap_model(run.model), step, interrupted, run.accelerator.trackers)
        distributed.barrier()

    def _conditions(self, path: str | None, ref_path: str | None) -> list[torch.Tensor]:
        """[control] or [control, reference] panels, read at the training stride and size."""
        cfg = self.cfg
        if path is None:
            return []
        with VideoClip(path) as clip:
            indices = control_indices(len(clip), cfg.video_sample_n_frames, cfg.video_sample_stride)
        panels = [read_frames(path, indices, cfg.video_sample_size)]
        if self.uses_ref:
            if ref_path is None:
                ref_path = self._references().get(str(Path(path).resolve()))
            if ref_path is not None:
                panels.append(read_frames(ref_path, indices[:1], cfg.video_sample_size))
            else:
                logger.warning("validation: no reference image for %s (pass --validation_ref_paths); the "
                               "reference slot stays empty", path)
        return panels

    def _references(self) -> dict[str, str]:
        if self.reference_videos is None:
            self.reference_videos = training_references(self.cfg)
        return self.reference_videos

    def _generate(self, model: torch.nn.Module, step: int, interrupted: Callable[[], bool], trackers) -> None:
        import imageio.v3 as iio

        cfg, parts = self.cfg, self.components
        out = Path(cfg.output_dir) / "sample"
        out.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        model.eval()
        count = len(cfg.validation_prompts)
        paths = cfg.validation_paths or [None] * count
        refs = cfg.validation_ref_paths or [None] * count
        for index, (prompt, path, ref_path) in enumerate(zip(cfg.validation_prompts, paths, refs)):
            if interrupted():
                logger.warning("validation at step %d stopped after %d of %d videos: preemption signal", step,
                               index, count)
                break
            panels = self._conditions(path, ref_path)
            frames = panels[0].shape[2] if panels else trim_to_interval(cfg.video_sample_n_frames)
            video = sampling.sample(
                model, parts.vae, self.scheduler_cls.from_config(parts.noise_scheduler.config), parts.text_encoder,
                prompt=prompt, negative_prompt=NEGATIVE_PROMPT, num_frames=frames, height=cfg.video_sample_size,
                width=cfg.video_sample_size, control=panels[0] if panels else None,
                ref=panels[1] if len(panels) > 1 else None, uses_ref=self.uses_ref, steps=INFERENCE_STEPS,
                guidance_scale=GUIDANCE_SCALE, generator=torch.Generator().manual_seed(cfg.seed))
            array = side_by_side(panels + [video.permute(1, 0, 2, 3).unsqueeze(0)])
            target = out / f"step-{step}-{index}.mp4"
            iio.imwrite(target, np.ascontiguousarray(array), fps=FPS, codec="libx264", plugin="pyav")
            send_to_trackers(trackers, f"validation/{index}", target, array, prompt, step)
            logger.info("validation video %s (%s | generated; %s)", target,
                        " | ".join(["control", "reference"][: len(panels)]) or "no control", prompt)
        model.train(was_training)
