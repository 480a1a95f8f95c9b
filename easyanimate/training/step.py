"""One training step's forward pass: pixels -> latents -> noisy input -> transformer -> loss.

The conditioning is fed exactly as diffusers' EasyAnimateControlPipeline feeds it at inference:
``control_latents = cat([control_video_latents, ref_latents])`` on the channel axis, with ``ref_latents`` zero
except its first latent frame (the reference image's latent), so a model trained here drops into that pipeline.
"""

from __future__ import annotations

import torch

from easyanimate.config import TrainConfig
from easyanimate.data.transforms import to_unit_range
from easyanimate.training import losses
from easyanimate.training.loss_types import LossType


def encode_pixels(vae, pixels: torch.Tensor, mini_batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, F, 3, H, W) uint8 (or float in [-1, 1]) -> scaled latents (B, C, T, h, w), ``mini_batch`` videos per
    VAE call. uint8 is converted on the VAE's device."""
    video = pixels.permute(0, 2, 1, 3, 4).to(device=vae.device)
    if video.dtype == torch.uint8:
        video = to_unit_range(video)
    video = video.to(vae.dtype)
    chunks = []
    with torch.no_grad():
        for start in range(0, video.shape[0], mini_batch):
            posterior = vae.encode(video[start:start + mini_batch]).latent_dist
            chunks.append(posterior.sample(generator=generator))
    return torch.cat(chunks) * vae.config.scaling_factor


def drop_per_sample(latents: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Zero each sample's latent with probability ``ratio`` (condition dropout for classifier-free guidance)."""
    keep = (torch.rand(latents.shape[0], generator=generator) >= ratio).to(latents.device, latents.dtype)
    return latents * keep.view(-1, *([1] * (latents.dim() - 1)))


class ControlObjective:
    """Builds the transformer input and computes the loss for one batch. One instance per run; the noising comes
    from the ``--loss_type`` table entry chosen when the run is built."""

    def __init__(self, cfg: TrainConfig, components, loss_type: LossType, *, uses_ref: bool, rank: int,
                 world_size: int):
        self.cfg = cfg
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.uses_ref = uses_ref
        self.noising = loss_type.noising(cfg, components.noise_scheduler, rank=rank, world_size=world_size)

    def conditioning(self, batch: dict, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        control = encode_pixels(self.vae, batch["control_pixel_values"], cfg.vae_mini_batch, generator)
        control = drop_per_sample(control, cfg.control_drop_ratio, generator)
        if not self.uses_ref:
            return control
        ref = torch.zeros_like(latents)
        # As the pipeline: a reference only when the sample has more than one latent frame. Deviation: an image
        # (one frame) gets none (the original fed the image as its own reference, a leak inference never has).
        if latents.shape[2] > 1:
            ref_latent = encode_pixels(self.vae, batch["ref_pixel_values"], cfg.vae_mini_batch, generator)
            ref[:, :, :1] = ref_latent.to(ref.dtype)
            ref = drop_per_sample(ref, cfg.ref_drop_ratio, generator)
        return torch.cat([control, ref.to(control.dtype)], dim=1)

    def noise_like(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
        if self.cfg.noise_share_in_frames:
            noise = losses.shared_frame_noise(noise, self.cfg.noise_share_in_frames_ratio)
        return noise.to(latents.dtype)

    def __call__(self, model, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """This batch's loss (a scalar tensor with its graph)."""
        cfg, noising = self.cfg, self.noising
        latents = encode_pixels(self.vae, batch["pixel_values"], cfg.vae_mini_batch, generator)
        control_latents = self.conditioning(batch, latents, generator)
        with torch.no_grad():
            text = self.text_encoder.encode(batch["text"], device=latents.device)
        noise = self.noise_like(latents, generator)
        draw = noising.draw(latents.shape[0], generator)
        noisy = noising.noisy(latents, noise, draw)
        target = noising.target(latents, noise, draw)
        weight = noising.weight(draw)
        # Deviation: the timestep goes in as fp32 (the original cast it to bf16, which rounds t > 256).
        pred = model(noisy, draw.t.to(latents.device, torch.float32),
                     encoder_hidden_states=text.encoder_hidden_states,
                     encoder_hidden_states_t5=text.encoder_hidden_states_t5,
                     control_latents=control_latents, return_dict=False)[0]
        pred = pred[:, : latents.shape[1]]  # models with a learned-variance head: mean channels only
        pred = noising.prediction(pred, noisy, draw)
        loss = losses.masked_mse(pred, target, None if weight is None else weight.to(latents.device))
        if cfg.motion_sub_loss:
            loss = losses.with_motion_sub_loss(loss, pred, target, cfg.motion_sub_loss_ratio)
        return loss
