"""``--loss_type`` as data: one table entry per loss, chosen once when the run is built.

An entry names the noise schedule class read from the model folder's ``scheduler/``, the scheduler validation
samples with, and the ``Noising`` that draws timesteps, noises latents, gives the target and the per-sample
weight. The per-batch code (``step.py``) calls the chosen entry and never compares ``loss_type`` strings.

Timestep indices mean what they meant in EasyAnimate's trainer for every ``--train_sampling_steps`` N:
- ``ddpm``: the index drawn from [0, N) is the DDPM timestep itself (N below the schedule's length trains only
  t < N; N above it is refused: the original indexed past the end of the schedule);
- ``sigma``: the index is a step of the schedule respaced to N steps (IDDPM's ``space_timesteps``); the
  transformer sees the original timestep that step stands for, the noise level is that timestep's; N above
  1000 is refused (the original could not respace 1000 steps into more);
- ``flow``: N has no effect (the original drew u from the SD3 density and discarded its index draw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from easyanimate.config import ConfigError, TrainConfig
from easyanimate.training import losses, timesteps

# The sigma loss (V1-V3) always used a 1000-step linear-beta schedule, whatever the model folder ships.
SIGMA_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                      prediction_type="epsilon")
SNR_X0_LAST_STEP = 249


@dataclass(frozen=True)
class Draw:
    """One batch's noise levels: the schedule position drawn, the timestep the transformer sees, flow's sigma."""

    index: torch.Tensor
    t: torch.Tensor
    sigmas: torch.Tensor | None = None


def _stratum(cfg: TrainConfig, rank: int, world_size: int, num_steps: int) -> tuple[int, int]:
    return timesteps.strata(rank, world_size, num_steps) if cfg.uniform_sampling else (0, 1)


class FlowMatching:
    """V5.1: sigma from the folder's FlowMatchEulerDiscreteScheduler at index floor(u * len), x_t = (1 - sigma) x0 +
    sigma eps, target eps - x0, SD3 weight from --weighting_scheme."""

    def __init__(self, cfg: TrainConfig, scheduler, *, rank: int, world_size: int):
        # Copies: the scheduler's tables change when a pipeline calls set_timesteps on it.
        self.timesteps = scheduler.timesteps.clone().float()
        self.sigmas = scheduler.sigmas.clone().float()[: len(self.timesteps)]
        self.cfg = cfg
        self.stratum = _stratum(cfg, rank, world_size, len(self.timesteps))

    def draw(self, batch_size: int, generator: torch.Generator) -> Draw:
        cfg = self.cfg
        u = timesteps.sample_flow_u(batch_size, generator, weighting_scheme=cfg.weighting_scheme,
                                    logit_mean=cfg.logit_mean, logit_std=cfg.logit_std, mode_scale=cfg.mode_scale,
                                    stratum=self.stratum)
        index = (u * len(self.timesteps)).long()
        return Draw(index=index, t=self.timesteps[index], sigmas=self.sigmas[index])

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, draw: Draw) -> torch.Tensor:
        return losses.flow_noisy(latents, noise, draw.sigmas.to(latents.device))

    def target(self, latents: torch.Tensor, noise: torch.Tensor, draw: Draw) -> torch.Tensor:
        return losses.flow_target(latents, noise)

    def weight(self, draw: Draw) -> torch.Tensor:
        return timesteps.flow_loss_weight(self.cfg.weighting_scheme, draw.sigmas)

    def prediction(self, pred: torch.Tensor, noisy: torch.Tensor, draw: Draw) -> torch.Tensor:
        return pred


class DiffusionNoising:
    """V5 (and V4): the folder's DDPMScheduler; the drawn index is the timestep; target eps or v as its
    ``prediction_type`` says; no weight."""

    def __init__(self, cfg: TrainConfig, scheduler, *, rank: int, world_size: int):
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"--loss_type {cfg.loss_type}: scheduler prediction_type "
                              f"{scheduler.config.prediction_type!r} in {cfg.pretrained_model_name_or_path}/scheduler "
                              "is not epsilon or v_prediction.")
        self.cfg, self.scheduler = cfg, scheduler
        self.timestep_of_index = self._timesteps(cfg, scheduler.config.num_train_timesteps)
        self.stratum = _stratum(cfg, rank, world_size, len(self.timestep_of_index))

    @staticmethod
    def _timesteps(cfg: TrainConfig, schedule_length: int) -> torch.Tensor:
        steps = cfg.train_sampling_steps
        if steps > schedule_length:
            raise ConfigError(f"--train_sampling_steps {steps}: --loss_type ddpm uses the drawn index as the DDPM "
                              f"timestep, and the model's schedule has {schedule_length}; pass at most "
                              f"{schedule_length} (EasyAnimate's trainer indexed past the schedule's end).")
        return torch.arange(steps)

    def draw(self, batch_size: int, generator: torch.Generator) -> Draw:
        index = timesteps.sample_indices(batch_size, len(self.timestep_of_index), generator, stratum=self.stratum)
        return Draw(index=index, t=self.timestep_of_index[index])

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, draw: Draw) -> torch.Tensor:
        return self.scheduler.add_noise(latents.float(), noise.float(), draw.t).to(latents.dtype)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, draw: Draw) -> torch.Tensor:
        if self.scheduler.config.prediction_type == "epsilon":
            return noise.float()
        return self.scheduler.get_velocity(latents.float(), noise.float(), draw.t)

    def weight(self, draw: Draw) -> None:
        return None

    def prediction(self, pred: torch.Tensor, noisy: torch.Tensor, draw: Draw) -> torch.Tensor:
        return pred


class SpacedSigmaNoising(DiffusionNoising):
    """V1-V3's ``sigma``: eps-MSE on the fixed 1000-step linear-beta schedule respaced to --train_sampling_steps;
    with --snr_loss, x0 target and prediction for schedule steps <= 249. The learned-variance bound term is not
    computed (V5/V5.1 transformers have no variance head)."""

    def __init__(self, cfg: TrainConfig, scheduler, *, rank: int, world_size: int):
        super().__init__(cfg, DDPMScheduler(**SIGMA_SCHEDULE), rank=rank, world_size=world_size)

    @staticmethod
    def _timesteps(cfg: TrainConfig, schedule_length: int) -> torch.Tensor:
        steps = cfg.train_sampling_steps
        if steps > schedule_length:
            raise ConfigError(f"--train_sampling_steps {steps}: --loss_type sigma respaces its {schedule_length}-step "
                              f"schedule to this many steps; pass at most {schedule_length}.")
        return timesteps.respaced(schedule_length, steps)

    def _small_step(self, draw: Draw, device) -> torch.Tensor:
        return (draw.index <= SNR_X0_LAST_STEP).view(-1, 1, 1, 1, 1).to(device)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, draw: Draw) -> torch.Tensor:
        if not self.cfg.snr_loss:
            return noise.float()
        return torch.where(self._small_step(draw, latents.device), latents.float(), noise.float())

    def prediction(self, pred: torch.Tensor, noisy: torch.Tensor, draw: Draw) -> torch.Tensor:
        if not self.cfg.snr_loss:
            return pred
        alphas = self.scheduler.alphas_cumprod.to(pred.device)[draw.t].float().view(-1, 1, 1, 1, 1)
        x0 = (noisy.float() - (1 - alphas).sqrt() * pred.float()) / alphas.sqrt()
        return torch.where(self._small_step(draw, pred.device), x0, pred.float())


@dataclass(frozen=True)
class LossType:
    """What one ``--loss_type`` means: its noising, the schedule it reads from ``scheduler/`` (required or not),
    and the scheduler class validation videos are sampled with (built from the training scheduler's config)."""

    noising: Callable[..., FlowMatching | DiffusionNoising]
    scheduler: type
    scheduler_required: bool
    validation_scheduler: type


LOSS_TYPES: dict[str, LossType] = {
    "flow": LossType(FlowMatching, FlowMatchEulerDiscreteScheduler, True, FlowMatchEulerDiscreteScheduler),
    "ddpm": LossType(DiffusionNoising, DDPMScheduler, True, DDIMScheduler),
    "sigma": LossType(SpacedSigmaNoising, DDPMScheduler, False, DDIMScheduler),
}
