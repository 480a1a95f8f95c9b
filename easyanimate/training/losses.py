"""Diffusion losses as pure tensor functions (no models, no RNG).

Faithful to EasyAnimate's trainer: element-wise MSE in fp32 with elements whose error exceeds 50 zeroed (they
still count in the mean's denominator), an optional per-sample weight, and the motion sub-loss: a plain MSE of
frame-to-frame differences (no outlier zeroing there, as in the original).
"""

from __future__ import annotations

import torch

OUTLIER_THRESHOLD = 50.0


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
               threshold: float = OUTLIER_THRESHOLD) -> torch.Tensor:
    """Mean of (pred - target)^2 over all elements, with |pred - target| > threshold zeroed.

    ``weight`` has one value per sample (shape (B,)) and multiplies that sample's squared errors.
    """
    diff = pred.float() - target.float()
    squared = diff.pow(2) * (diff.abs() <= threshold)
    if weight is not None:
        squared = squared * weight.float().view(-1, *([1] * (squared.dim() - 1)))
    return squared.mean()


def motion_sub_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the frame-to-frame differences of prediction and target; latents are (B, C, T, H, W)."""
    pred_motion = pred.float()[:, :, 1:] - pred.float()[:, :, :-1]
    target_motion = target.float()[:, :, 1:] - target.float()[:, :, :-1]
    return (pred_motion - target_motion).pow(2).mean()


def with_motion_sub_loss(loss: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, ratio: float) -> torch.Tensor:
    """(1 - ratio) * loss + ratio * motion loss, only when the latent has more than two frames (as the original)."""
    if pred.shape[2] <= 2:
        return loss
    return (1.0 - ratio) * loss + ratio * motion_sub_loss(pred, target)


def flow_noisy(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Rectified flow: x_t = (1 - sigma) x0 + sigma * eps, one sigma per sample."""
    sigma = sigmas.float().view(-1, *([1] * (latents.dim() - 1)))
    return ((1.0 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)


def flow_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Rectified flow's velocity target eps - x0."""
    return noise.float() - latents.float()


def shared_frame_noise(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """Correlate noise along time: frame t becomes ratio * frame(t-1) + (1 - ratio) * own, recursively.

    Like the original this is not variance-preserving; latents are (B, C, T, H, W).
    """
    frames = [noise[:, :, 0]]
    for t in range(1, noise.shape[2]):
        frames.append(ratio * frames[-1] + (1.0 - ratio) * noise[:, :, t])
    return torch.stack(frames, dim=2)
