"""Samples of one batch -> the training batch dict (see the contract): float [-1, 1], reference frame, tiling.

All samples of a batch share (h, w) and frames by construction; only a video shorter than the batch's frame
count (the documented fallback) shortens the batch, to the common 4k+1 length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .buckets import SizeRules, tile_factor
from .frames import trim_to_interval
from .seeding import Stream, rng
from .transforms import to_unit_range

FIRST_FRAME_PROBABILITY = 0.4


@dataclass(frozen=True)
class Collate:
    rules: SizeRules
    seed: int
    control_ref_image: str = "first_frame"

    def reference_index(self, epoch: int, batch: int, slot: int, frames: int) -> int:
        """Frame 0, or for ``random``: frame 0 with p = 0.4, else a uniform later frame (as the original)."""
        if self.control_ref_image == "first_frame" or frames == 1:
            return 0
        draw = rng(self.seed, Stream.REFERENCE, epoch, batch, slot)
        return 0 if draw.random() < FIRST_FRAME_PROBABILITY else int(draw.integers(1, frames))

    def __call__(self, samples: list[dict]) -> dict:
        frames = trim_to_interval(min(s["pixels"].shape[0] for s in samples), self.rules.frame_interval)
        pixels = torch.stack([s["pixels"][:frames] for s in samples])
        control = torch.stack([s["control"][:frames] for s in samples])
        refs = [self.reference_index(s["request"].epoch, s["request"].batch, s["request"].slot, frames)
                for s in samples]
        ref = torch.stack([pixels[i, r:r + 1] for i, r in enumerate(refs)])
        tiles = tile_factor(self.rules, frames, pixels.shape[-2], pixels.shape[-1])
        return {
            "pixel_values": to_unit_range(pixels).repeat(tiles, 1, 1, 1, 1),
            "control_pixel_values": to_unit_range(control).repeat(tiles, 1, 1, 1, 1),
            "ref_pixel_values": to_unit_range(ref).repeat(tiles, 1, 1, 1, 1),
            "text": [s["text"] for s in samples] * tiles,
            "data_type": samples[0]["request"].data_type,
            "sample_ids": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "bad_sample_ids": torch.tensor(sorted({i for s in samples for i in s["bad"]}), dtype=torch.long),
        }
