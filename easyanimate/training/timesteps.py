"""Which noise level each sample trains at: pure functions of a generator, the rank and the config.

Deviation from the original (README): every rank draws its own timesteps from its own generator, and
``uniform_sampling`` stratifies them for every loss type, flow included (the original draws the same flow sigma on
every rank and discards the stratified draw).
"""

from __future__ import annotations

import math

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3


def strata(rank: int, world_size: int, num_steps: int) -> tuple[int, int]:
    """(index, count) of this rank's timestep interval: count = gcd(world size, steps), as the original groups."""
    count = math.gcd(world_size, num_steps)
    return rank % count, count


def sample_indices(batch_size: int, num_steps: int, generator: torch.Generator, *, stratum: tuple[int, int] = (0, 1)
                   ) -> torch.Tensor:
    """Integer timestep indices in [0, num_steps), restricted to the stratum's interval."""
    index, count = stratum
    width = num_steps // count
    low = index * width
    return torch.randint(low, low + width, (batch_size,), generator=generator)


def sample_flow_u(batch_size: int, generator: torch.Generator, *, weighting_scheme: str, logit_mean: float,
                  logit_std: float, mode_scale: float, stratum: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """u in [0, 1) from the SD3 density; with the plain uniform density, squeezed into this rank's stratum."""
    u = compute_density_for_timestep_sampling(weighting_scheme, batch_size, logit_mean=logit_mean,
                                              logit_std=logit_std, mode_scale=mode_scale, generator=generator)
    if weighting_scheme == "none" and stratum[1] > 1:
        u = (stratum[0] + u) / stratum[1]
    return u.clamp(0.0, 1.0 - 1e-7)


def flow_loss_weight(weighting_scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    return compute_loss_weighting_for_sd3(weighting_scheme, sigmas.float())

