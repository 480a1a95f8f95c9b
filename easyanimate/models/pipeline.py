"""diffusers' EasyAnimateControlPipeline, mended so that it runs.

As released (every diffusers version that has it, including 0.42.1), ``__call__`` fails before and after
denoising; reported upstream as huggingface/diffusers#13638:
1. it passes ``text_encoder_index=0`` to ``encode_prompt``, which does not take it (TypeError);
2. it calls ``self.decode_latents``, which the class does not define (AttributeError).
This subclass adds exactly those two methods and changes nothing else; drop it once diffusers fixes the class.
Callers must still pass a ``negative_prompt`` when ``guidance_scale > 1`` (a third point of the same issue).
"""

from __future__ import annotations

import torch
from diffusers import EasyAnimateControlPipeline


class MendedEasyAnimateControlPipeline(EasyAnimateControlPipeline):
    def encode_prompt(self, *args, text_encoder_index: int = 0, **kwargs):
        # diffusers#13638 (1): the single text encoder of this pipeline is index 0; the argument carries nothing.
        return super().encode_prompt(*args, **kwargs)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        # diffusers#13638 (2): decode as EasyAnimatePipeline (text-to-video) does inline.
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
