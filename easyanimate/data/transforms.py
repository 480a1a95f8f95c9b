"""Resize and crop clips in torch, on uint8 (antialiased bilinear), no torchvision and no PIL per frame.

Each clip is centre-cropped to the target aspect ratio first (so only the kept pixels are resized), then resized
to the batch's (h, w). The crop is computed as a fraction of the frame, so a control clip gets the same region
as its video even when it was stored at another resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def centre_crop_box(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of the largest centred region of height x width with the target's aspect."""
    if height * target_w > width * target_h:
        crop_h, crop_w = max(1, round(width * target_h / target_w)), width
    else:
        crop_h, crop_w = height, max(1, round(height * target_w / target_h))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def resize_clip(frames: np.ndarray | torch.Tensor, target_h: int, target_w: int) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, target_h, target_w) uint8, centre-cropped to the aspect then resized."""
    clip = torch.as_tensor(frames)
    if clip.dtype != torch.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected (F, H, W, 3) uint8 frames, got {tuple(clip.shape)} {clip.dtype}")
    top, left, crop_h, crop_w = centre_crop_box(clip.shape[1], clip.shape[2], target_h, target_w)
    clip = clip[:, top:top + crop_h, left:left + crop_w].permute(0, 3, 1, 2)
    if (crop_h, crop_w) == (target_h, target_w):
        return clip.contiguous()
    # channels_last keeps the uint8 kernel on its fast path; antialias avoids aliasing when shrinking.
    clip = clip.contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(clip, size=(target_h, target_w), mode="bilinear", antialias=True, align_corners=False)
    return resized.contiguous()


def to_unit_range(clip: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return clip.to(torch.float32).div_(127.5).sub_(1.0)
