"""Sample a control video with our own text encoder(s): the sampler validation uses for V5 and V5.1 alike.

diffusers' EasyAnimateControlPipeline takes one text encoder and always adds a reference slot, so it runs neither
V5 (Bert + T5, ``encoder_hidden_states_t5``) nor a ``control`` model (noisy + control channels only). This is its
denoising loop, step for step (same latent noise draw, VAE ``mode()`` of the conditions, flow schedule with
``mu=1``, classifier-free guidance over [negative, prompt]), with the conditions built as training builds them
(``step.py``) and the text from ``models.text.TextEncoder``. On V5.1 it reproduces the mended pipeline's output
(tests/training/test_sampling.py), which is what ties it to the pipeline a trained model is used with.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def _encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in [0, 1] -> scaled latents, the distribution's mode (as the pipeline conditions)."""
    video = (pixels * 2 - 1).to(vae.device, vae.dtype)
    return vae.encode(video).latent_dist.mode() * vae.config.scaling_factor


def conditions(vae, latents: torch.Tensor, control: torch.Tensor | None, ref: torch.Tensor | None,
               uses_ref: bool) -> torch.Tensor:
    """control latents (zeros without a control video), then, for control_ref models, the reference slot: zero
    but for the reference image's latent in its first frame."""
    control_latents = _encode(vae, control) if control is not None else torch.zeros_like(latents)
    if not uses_ref:
        return control_latents.to(latents.dtype)
    ref_slot = torch.zeros_like(latents)
    if ref is not None:
        ref_slot[:, :, :1] = _encode(vae, ref).to(latents.dtype)
    return torch.cat([control_latents.to(latents.dtype), ref_slot], dim=1)


def _set_timesteps(scheduler, steps: int, device) -> torch.Tensor:
    extra = {"mu": 1} if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) else {}
    scheduler.set_timesteps(steps, device=device, **extra)
    return scheduler.timesteps


def _step_kwargs(scheduler, generator: torch.Generator) -> dict:
    accepted = inspect.signature(scheduler.step).parameters
    return {k: v for k, v in (("eta", 0.0), ("generator", generator)) if k in accepted}


@torch.no_grad()
def sample(transformer, vae, scheduler, text_encoder, *, prompt: str, negative_prompt: str, num_frames: int,
           height: int, width: int, control: torch.Tensor | None = None, ref: torch.Tensor | None = None,
           uses_ref: bool, steps: int = 25, guidance_scale: float = 6.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One video, (F, 3, H, W) in [0, 1]. ``control``: (1, 3, F, H, W), ``ref``: (1, 3, 1, H, W), both in [0, 1]."""
    device, dtype = transformer.device, transformer.dtype
    guided = guidance_scale > 1
    text = text_encoder.encode([negative_prompt, prompt] if guided else [prompt], device=device)
    states = text.encoder_hidden_states.to(dtype)
    states_t5 = text.encoder_hidden_states_t5.to(dtype) if text.encoder_hidden_states_t5 is not None else None
    shape = (1, vae.config.latent_channels, (num_frames - 1) // vae.temporal_compression_ratio + 1,
             height // vae.spatial_compression_ratio, width // vae.spatial_compression_ratio)
    latents = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)
    control_latents = conditions(vae, latents, control, ref, uses_ref)
    control_latents = torch.cat([control_latents] * 2) if guided else control_latents
    step_kwargs = _step_kwargs(scheduler, generator)
    for t in _set_timesteps(scheduler, steps, device):
        model_input = torch.cat([latents] * 2) if guided else latents
        if hasattr(scheduler, "scale_model_input"):
            model_input = scheduler.scale_model_input(model_input, t)
        t_batch = torch.full((model_input.shape[0],), float(t), device=device, dtype=model_input.dtype)
        pred = transformer(model_input, t_batch, encoder_hidden_states=states, encoder_hidden_states_t5=states_t5,
                           control_latents=control_latents, return_dict=False)[0]
        pred = pred[:, : latents.shape[1]]  # a learned-variance head: the mean channels
        if guided:
            uncond, cond = pred.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
    video = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return (video[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 0, 2, 3).cpu()
