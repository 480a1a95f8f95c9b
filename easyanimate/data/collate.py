"""Samples of one batch -> the training batch dict (see the contract): reference frame, tiling, [-1, 1] floats.

All samples of a batch share (h, w) and frames by construction; only a video shorter than the batch's frame
count (the documented fallback) shortens the batch, to the common 4k+1 length. Pixels stay uint8 through the
worker -> main process hand-over (a quarter of the shared memory of float32), laid out channels-last as decoded
(the (B, F, 3, H, W) tensors are permuted views), in one reused shared-memory block (``handover``; a frame-0
reference is a view of the pixels, a later one its own copy),
and become float32 in ``to_float_batch``, which the loader applies in the main process, or on the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .buckets import SizeRules, tile_factor
from .frames import trim_to_interval
from .handover import SharedBlocks
from .seeding import Stream, rng
from .transforms import to_unit_range

__all__ = ["Collate", "to_float_batch", "to_unit_range", "BLOCK_KEY"]

FIRST_FRAME_PROBABILITY = 0.4
BLOCK_KEY = "shared_block"  # which reusable block holds the pixels; the loader takes it out of the batch


@dataclass(frozen=True)
class Collate:
    rules: SizeRules
    seed: int
    control_ref_image: str = "first_frame"
    blocks: SharedBlocks | None = None

    def reference_index(self, epoch: int, batch: int, slot: int, frames: int) -> int:
        """Frame 0, or for ``random``: frame 0 with p = 0.4, else a uniform later frame (as the original)."""
        if self.control_ref_image == "first_frame" or frames == 1:
            return 0
        draw = rng(self.seed, Stream.REFERENCE, epoch, batch, slot)
        return 0 if draw.random() < FIRST_FRAME_PROBABILITY else int(draw.integers(1, frames))

    def __call__(self, samples: list[dict]) -> dict:
        frames = trim_to_interval(min(s["pixels"].shape[0] for s in samples), self.rules.frame_interval)
        refs = [self.reference_index(s["request"].epoch, s["request"].batch, s["request"].slot, frames)
                for s in samples]
        height, width = samples[0]["pixels"].shape[-2:]
        tiles = tile_factor(self.rules, frames, height, width)
        groups = [[s["pixels"][:frames] for s in samples] * tiles, [s["control"][:frames] for s in samples] * tiles]
        later = any(refs)  # else every reference is frame 0 (first_frame, every image): a view of the pixels
        if later:
            groups.append([s["pixels"][r:r + 1] for s, r in zip(samples, refs)] * tiles)
        stacked, block = _stack(self.blocks, *groups)
        pixels, control = stacked[:2]
        ref = stacked[2] if later else pixels[:, :1]
        return {
            "pixel_values": pixels,
            "control_pixel_values": control,
            "ref_pixel_values": ref,
            BLOCK_KEY: block,
            "text": [s["text"] for s in samples] * tiles,
            "data_type": samples[0]["request"].data_type,
            "sample_ids": [s["index"] for s in samples],
            "bad_sample_ids": sorted({i for s in samples for i in s["bad"]}),
        }


def _stack(blocks: SharedBlocks | None, *groups: list[torch.Tensor]) -> tuple[list[torch.Tensor], object]:
    """Each group of (F, 3, H, W) clips -> one (B, F, 3, H, W) tensor, all in one block; and the block's key.

    The clips are views of (F, H, W, 3) frames, so a channels-first stack would be a transposing copy (about 5x
    slower than a plain one); stacking them as (F, H, W, 3) and returning a permuted view keeps it a plain copy,
    the only one between the decoder's output and the training process.
    """
    shapes = [(len(group), *group[0].permute(0, 2, 3, 1).shape) for group in groups]
    sizes = [math.prod(shape) for shape in shapes]
    storage, key = blocks.take(sum(sizes)) if blocks else (torch.UntypedStorage(sum(sizes)), None)
    stacked, offset = [], 0
    for group, shape, size in zip(groups, shapes, sizes):
        out = torch.empty(0, dtype=torch.uint8).set_(storage, offset, shape)
        torch.stack([clip.permute(0, 2, 3, 1) for clip in group], out=out)
        stacked.append(out.permute(0, 1, 4, 2, 3))
        offset += size
    return stacked, key


PIXEL_KEYS = ("pixel_values", "control_pixel_values", "ref_pixel_values")


def to_float_batch(batch: dict) -> dict:
    """uint8 pixels -> float32 in [-1, 1], in place."""
    for key in PIXEL_KEYS:
        batch[key] = to_unit_range(batch[key])
    return batch
