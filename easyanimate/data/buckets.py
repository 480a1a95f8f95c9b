"""Aspect-ratio buckets and per-batch sizes (height, width, frames): pure functions, the seed's docs as spec.

A bucket is an aspect ratio with an (h, w) of about 512 x 512 pixels; a batch at side ``s`` uses that bucket
scaled by s / 512, rounded down to multiples of 16 (VAE /8, patch 2). Side ranges, from the seed's examples:

- ``random_hw_adapt`` alone: images from min(image, video, 512) to max(image, video), videos from
  min(image, video, 512) to image_sample_size, all video_sample_n_frames frames.
- with ``training_with_video_token_length``: images and videos from min(image, video) to max(image, video); a
  video batch takes the largest 4k+1 frame count whose pixel volume fits n x token_sample_size^2 (512 -> 49,
  768 -> 21, 1024 -> 9 frames for n = 49, T = 512), and sides that fit fewer than 5 frames are not drawn.
- neither: images at image_sample_size, videos at video_sample_size.

Images take the top side with probability 0.75 and share the rest equally (as the original); videos under the
token budget draw uniformly. Sides more than 1.25x the batch's smallest native side are skipped (no upscaling).
``random_ratio_crop`` ignores the batch's bucket: it crops to one of the original's 15 crop shapes, drawn with
its weights, at the batch's side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .frames import frames_for_budget, trim_to_interval

BASE_SIDE = 512
ALIGN = 16
MIN_VIDEO_FRAMES = 5
TOP_SIDE_PROBABILITY = 0.75
UPSCALE_LIMIT = 1.25


def _aspect_table(base: int = BASE_SIDE, step: int = 32) -> tuple[tuple[int, int], ...]:
    """(h, w) pairs of about base^2 pixels, multiples of ``step``, h/w from 1/4 to 4, symmetric under h <-> w."""
    landscape = {(h, round(base * base / h / step) * step) for h in range(base // 2, base + 1, step)}
    return tuple(sorted(landscape | {(w, h) for h, w in landscape}))


ASPECT_BUCKETS = _aspect_table()
SQUARE = ASPECT_BUCKETS.index((BASE_SIDE, BASE_SIDE))
# --random_ratio_crop: EasyAnimate's crop shapes (h, w) at side 512, h/w from 0.42 to 2.4, and their weights.
RANDOM_CROP_SHAPES = ((320, 768), (352, 704), (384, 672), (416, 608), (448, 576), (480, 544), (480, 512),
                      (512, 512), (512, 480), (544, 480), (576, 448), (608, 416), (672, 384), (704, 352), (768, 320))
RANDOM_CROP_WEIGHTS = (1, 2, 4, 4, 4, 4, 8, 8, 8, 4, 4, 4, 4, 2, 1)


def closest_bucket(height: int, width: int) -> int:
    """Index of the bucket whose aspect ratio is nearest (in log space) to height / width."""
    target = math.log(height / width)
    return min(range(len(ASPECT_BUCKETS)), key=lambda i: abs(math.log(ASPECT_BUCKETS[i][0] / ASPECT_BUCKETS[i][1])
                                                              - target))


def bucket_size(bucket: int, side: int) -> tuple[int, int]:
    """(h, w) of a bucket scaled to side^2 pixels, multiples of 16, at least 16."""
    h, w = ASPECT_BUCKETS[bucket]
    return (max(ALIGN, h * side // BASE_SIDE // ALIGN * ALIGN), max(ALIGN, w * side // BASE_SIDE // ALIGN * ALIGN))


def random_crop_size(side: int, rng: np.random.Generator) -> tuple[int, int]:
    """A crop shape drawn with the original's weights, scaled to ``side`` and floored to multiples of 16."""
    weights = np.array(RANDOM_CROP_WEIGHTS, dtype=float)
    h, w = RANDOM_CROP_SHAPES[int(rng.choice(len(RANDOM_CROP_SHAPES), p=weights / weights.sum()))]
    return max(ALIGN, h * side // BASE_SIDE // ALIGN * ALIGN), max(ALIGN, w * side // BASE_SIDE // ALIGN * ALIGN)


def side_ladder(low: int, high: int) -> list[int]:
    """Sides from low to high (both included) in steps of high/8 (128 at 1024), multiples of 16."""
    if low >= high:
        return [high]
    step = max(ALIGN, high // 8 // ALIGN * ALIGN)
    return sorted(set(range(low, high, step)) | {high})


@dataclass(frozen=True)
class SizeRules:
    """The size flags of TrainConfig that decide batch shapes."""

    image_sample_size: int
    video_sample_size: int
    token_sample_size: int
    video_sample_n_frames: int
    random_hw_adapt: bool = False
    training_with_video_token_length: bool = False
    random_frame_crop: bool = False
    keep_all_node_same_token_length: bool = False
    enable_bucket: bool = True
    random_ratio_crop: bool = False
    frame_interval: int = 4

    @classmethod
    def from_config(cls, cfg, frame_interval: int = 4) -> "SizeRules":
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__ if name != "frame_interval"},
                   frame_interval=frame_interval)

    @property
    def budget(self) -> int:
        """Pixels per sample under the token budget: n x token_sample_size^2."""
        return self.video_sample_n_frames * self.token_sample_size ** 2

    @property
    def max_frames(self) -> int:
        return trim_to_interval(self.video_sample_n_frames, self.frame_interval)


def side_range(rules: SizeRules, data_type: str) -> tuple[int, int]:
    """(smallest, largest) training side for images or videos (see the module docstring)."""
    image, video = rules.image_sample_size, rules.video_sample_size
    if not rules.random_hw_adapt:
        side = image if data_type == "image" else video
        return side, side
    if rules.training_with_video_token_length:
        return min(image, video), max(image, video)
    low = min(image, video, BASE_SIDE)
    return (low, max(image, video)) if data_type == "image" else (low, image)


def frame_count(rules: SizeRules, height: int, width: int) -> int:
    """Frames of a video batch at (height, width): all n, or the token-budget count."""
    if not rules.training_with_video_token_length:
        return rules.max_frames
    return frames_for_budget(height * width, rules.max_frames, rules.budget, rules.frame_interval)


def candidate_sides(rules: SizeRules, data_type: str, bucket: int, min_native_side: float | None) -> list[int]:
    """Sides a batch may be drawn at, smallest first."""
    low, high = side_range(rules, data_type)
    sides = side_ladder(low, high)
    if data_type == "video" and rules.training_with_video_token_length:
        sides = [s for s in sides if frame_count(rules, *bucket_size(bucket, s)) >= MIN_VIDEO_FRAMES] or [low]
    if min_native_side is not None:
        sides = [s for s in sides if s <= UPSCALE_LIMIT * min_native_side] or sides[:1]
    return sides


@dataclass(frozen=True)
class BatchShape:
    height: int
    width: int
    frames: int


def draw_side(rules: SizeRules, data_type: str, sides: list[int], rng: np.random.Generator) -> int:
    """Images: the top side with p = 0.75, the others equally; videos under the budget: uniform."""
    if len(sides) == 1:
        return sides[0]
    if data_type == "video" and rules.training_with_video_token_length:
        return int(sides[rng.integers(len(sides))])
    rest = (1 - TOP_SIDE_PROBABILITY) / (len(sides) - 1)
    return int(rng.choice(sides, p=[rest] * (len(sides) - 1) + [TOP_SIDE_PROBABILITY]))


def plan_batch(rules: SizeRules, data_type: str, bucket: int, min_native_side: float | None,
               rng: np.random.Generator, shared_rng: np.random.Generator | None = None) -> BatchShape:
    """The (h, w, frames) of one batch. ``shared_rng`` is the same on every rank (keep_all_node_same_token_length)."""
    if not rules.enable_bucket:
        bucket = SQUARE
    side = draw_side(rules, data_type, candidate_sides(rules, data_type, bucket, min_native_side), rng)
    height, width = bucket_size(bucket, side)
    if rules.random_ratio_crop and rules.enable_bucket:
        height, width = random_crop_size(side, rng)
    if data_type == "image":
        return BatchShape(height, width, 1)
    frames = frame_count(rules, height, width)
    if rules.keep_all_node_same_token_length and shared_rng is not None:
        frames = min(frames, _shared_budget_frames(rules, height * width, shared_rng))
    if rules.random_frame_crop and frames > MIN_VIDEO_FRAMES and rng.random() >= 0.9:
        shorter = list(range(MIN_VIDEO_FRAMES, frames, rules.frame_interval))
        frames = int(shorter[rng.integers(len(shorter))])
    return BatchShape(height, width, frames)


def _shared_budget_frames(rules: SizeRules, pixels: int, shared_rng: np.random.Generator) -> int:
    """Frames under a token budget drawn identically on all ranks from {T/2 .. T}^2 x n."""
    sides = side_ladder(max(ALIGN, rules.token_sample_size // 2 // ALIGN * ALIGN), rules.token_sample_size)
    token_side = int(sides[shared_rng.integers(len(sides))])
    return frames_for_budget(pixels, rules.max_frames, rules.video_sample_n_frames * token_side ** 2,
                             rules.frame_interval)


def tile_factor(rules: SizeRules, frames: int, height: int, width: int) -> int:
    """How often the collate repeats a batch under the token budget: 4x at <= 1/16 of it, 2x at <= 1/4."""
    if not rules.training_with_video_token_length:
        return 1
    pixels = frames * height * width
    if pixels <= rules.budget // 16:
        return 4
    if pixels <= rules.budget // 4:
        return 2
    return 1


def latent_tokens(frames: int, height: int, width: int, spatial: int = 8, patch: int = 2,
                  frame_interval: int = 4) -> int:
    """Transformer tokens of a clip: latent frames x (h / 8 / patch) x (w / 8 / patch)."""
    return ((frames - 1) // frame_interval + 1) * (height // spatial // patch) * (width // spatial // patch)
