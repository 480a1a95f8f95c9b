"""Resize and crop clips in torch, on uint8 (antialiased bilinear), no torchvision and no PIL per frame.

Each clip is resized, keeping its aspect, to just cover the batch's (h, w), then centre-cropped. The geometry is
relative to the frame, so a control clip gets the same region as its video even when it was stored at another
resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MIN_DECODER_SCALED_SIDE = 128
# Fraction of the native pixel count below which decord scales while decoding. Measured with
# benchmarks/decoder_scaling.py (2 cores): in the decoder 0.83x the time of a full decode + torch resize at 0.25,
# about even at 0.13-0.28, 1.53x at 0.44 (1024x576 -> 683x384).
SCALE_IN_DECODER_BELOW = 0.3


def cover_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """The size height x width is resized to, keeping its aspect, so that it just covers the target."""
    scale = max(target_h / height, target_w / width)
    return max(target_h, round(height * scale)), max(target_w, round(width * scale))


def decode_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int] | None:
    """The size to let the decoder scale a height x width video to, or None to decode at full size.

    Only clear reductions are worth it, and only to sides of 128+: decord returns mis-shaped frames for some
    tiny sizes (dmlc/decord#336).
    """
    size = cover_size(height, width, target_h, target_w)
    if min(size) < MIN_DECODER_SCALED_SIDE or size[0] * size[1] > SCALE_IN_DECODER_BELOW * height * width:
        return None
    return size


def resize_clip(frames: np.ndarray | torch.Tensor, target_h: int, target_w: int) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, target_h, target_w) uint8: resized to cover the target, then centre-cropped.

    Decoded frames are (F, H, W, 3) contiguous, i.e. channels-last (F, 3, H, W): the uint8 antialiased kernel
    reads them without a copy. The result is a strided view; the batch stack makes the one contiguous copy.
    """
    clip = torch.as_tensor(frames)
    if clip.dtype != torch.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {tuple(clip.shape)} {clip.dtype}")
    clip = clip.permute(0, 3, 1, 2)
    size = cover_size(clip.shape[2], clip.shape[3], target_h, target_w)
    if size != tuple(clip.shape[2:]):
        clip = F.interpolate(clip.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                             antialias=True, align_corners=False)
    top, left = (size[0] - target_h) // 2, (size[1] - target_w) // 2
    return clip[:, :, top:top + target_h, left:left + target_w]


def to_unit_range(clip: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return clip.to(torch.float32).div_(127.5).sub_(1.0)
