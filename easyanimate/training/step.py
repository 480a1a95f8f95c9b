"""One training step's forward pass: pixels -> latents -> noisy input -> transformer -> loss.

The conditioning is fed exactly as diffusers' EasyAnimateControlPipeline feeds it at inference:
``control_latents = cat([control_video_latents, ref_latents])`` on the channel axis, with ``ref_latents`` zero
except its first latent frame (the reference image's latent), so a model trained here drops into that pipeline.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from easyanimate.config import ConfigError, TrainConfig
from easyanimate.data.transforms import to_unit_range
from easyanimate.training import losses, timesteps

# The sigma loss (V1-V3) always used a 1000-step linear-beta schedule, whatever the model folder ships.
SIGMA_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                      prediction_type="epsilon")
SNR_X0_LAST_T = 249


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
    """Builds the transformer input and computes the loss for one batch. One instance per run."""

    def __init__(self, cfg: TrainConfig, components, *, uses_ref: bool, rank: int, world_size: int):
        self.cfg = cfg
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.uses_ref = uses_ref
        self.stratum = timesteps.strata(rank, world_size, cfg.train_sampling_steps) if cfg.uniform_sampling \
            else (0, 1)
        scheduler = components.noise_scheduler
        if cfg.loss_type == "flow":
            # Copies: the scheduler's tables change when a pipeline calls set_timesteps on it.
            self.flow_timesteps = scheduler.timesteps.clone().float()
            self.flow_sigmas = scheduler.sigmas.clone().float()[: len(self.flow_timesteps)]
        else:
            self.ddpm = scheduler if cfg.loss_type == "ddpm" else DDPMScheduler(**SIGMA_SCHEDULE)
            if self.ddpm.config.prediction_type not in ("epsilon", "v_prediction"):
                raise ConfigError(f"scheduler prediction_type {self.ddpm.config.prediction_type!r} in "
                                  f"{cfg.pretrained_model_name_or_path}/scheduler is not epsilon or v_prediction.")

    def conditioning(self, batch: dict, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        control = encode_pixels(self.vae, batch["control_pixel_values"], cfg.vae_mini_batch, generator)
        control = drop_per_sample(control, cfg.control_drop_ratio, generator)
        if not self.uses_ref:
            return control
        ref = torch.zeros_like(latents)
        # Deviation: an image sample gets no reference (the original fed the image as its own reference, a leak
        # the pipeline never reproduces at inference).
        if batch["data_type"] == "video":
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
        cfg = self.cfg
        latents = encode_pixels(self.vae, batch["pixel_values"], cfg.vae_mini_batch, generator)
        control_latents = self.conditioning(batch, latents, generator)
        with torch.no_grad():
            text = self.text_encoder.encode(batch["text"], device=latents.device)
        noise = self.noise_like(latents, generator)
        bsz = latents.shape[0]
        weight = None
        if cfg.loss_type == "flow":
            u = timesteps.sample_flow_u(bsz, generator, weighting_scheme=cfg.weighting_scheme,
                                        logit_mean=cfg.logit_mean, logit_std=cfg.logit_std,
                                        mode_scale=cfg.mode_scale, stratum=self.stratum)
            index = (u * len(self.flow_timesteps)).long()
            t = self.flow_timesteps[index]
            sigmas = self.flow_sigmas[index]
            noisy, target = losses.flow_noisy_and_target(latents, noise, sigmas.to(latents.device))
            weight = timesteps.flow_loss_weight(cfg.weighting_scheme, sigmas).to(latents.device)
        else:
            index = timesteps.sample_indices(bsz, cfg.train_sampling_steps, generator, stratum=self.stratum)
            t = index * (self.ddpm.config.num_train_timesteps // cfg.train_sampling_steps)
            noisy = self.ddpm.add_noise(latents.float(), noise.float(), t).to(latents.dtype)
            target = noise.float() if self.ddpm.config.prediction_type == "epsilon" \
                else self.ddpm.get_velocity(latents.float(), noise.float(), t)
            if cfg.loss_type == "sigma" and cfg.snr_loss:
                target = torch.where((t <= SNR_X0_LAST_T).view(-1, 1, 1, 1, 1), latents.float(), target)
        # Deviation: the timestep goes in as fp32 (the original cast it to bf16, which rounds t > 256).
        pred = model(noisy, t.to(latents.device, torch.float32),
                     encoder_hidden_states=text.encoder_hidden_states,
                     encoder_hidden_states_t5=text.encoder_hidden_states_t5,
                     control_latents=control_latents, return_dict=False)[0]
        pred = pred[:, : latents.shape[1]]  # models with a learned-variance head: mean channels only
        if cfg.loss_type == "sigma" and cfg.snr_loss:
            pred = self._x0_from_eps_where_small_t(pred, noisy, t)
        loss = losses.masked_mse(pred, target, weight)
        if cfg.motion_sub_loss:
            loss = losses.with_motion_sub_loss(loss, pred, target, cfg.motion_sub_loss_ratio)
        return loss

    def _x0_from_eps_where_small_t(self, eps: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alphas = self.ddpm.alphas_cumprod.to(eps.device)[t].float().view(-1, 1, 1, 1, 1)
        x0 = (noisy.float() - (1 - alphas).sqrt() * eps.float()) / alphas.sqrt()
        return torch.where((t <= SNR_X0_LAST_T).view(-1, 1, 1, 1, 1).to(eps.device), x0, eps.float())
