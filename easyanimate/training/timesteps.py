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
    """(index, count) of this rank's timestep interval, as the original groups ranks: count = gcd(world size,
    steps) groups of consecutive ranks."""
    count = math.gcd(world_size, num_steps)
    return rank // (world_size // count), count


def respaced(schedule_length: int, steps: int) -> torch.Tensor:
    """The ``steps`` timesteps of a ``schedule_length``-step schedule that a respaced schedule keeps (IDDPM's
    single-section spacing: evenly strided from 0 to the last step, each rounded to the nearest integer)."""
    if not 1 <= steps <= schedule_length:
        raise ValueError(f"cannot respace {schedule_length} steps into {steps}")
    stride = 1.0 if steps == 1 else (schedule_length - 1) / (steps - 1)
    kept, position = [], 0.0
    for _ in range(steps):
        kept.append(round(position))
        position += stride  # accumulated, not multiplied: the same rounding as the original
    return torch.tensor(kept)


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

