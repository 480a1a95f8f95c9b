"""Trainable parameters, optimizer, learning-rate schedule and gradient clipping rules.

Deviations from the original (README): warm-up and total steps are optimizer steps, never multiplied by the GPU
count; ``max_grad_norm`` is honoured under DeepSpeed too (as a constant clip in the ZeRO config).
"""

from __future__ import annotations

import logging

import torch
from diffusers.optimization import get_scheduler

from easyanimate.config import ConfigError, TrainConfig
from easyanimate.models.original import select_by_pattern

logger = logging.getLogger(__name__)


Params = list[torch.nn.Parameter]


def _matched(names: list[str], patterns: list[str], flag: str) -> set[str]:
    """Names selected by ``patterns`` (EasyAnimate's parameter names first, see select_by_pattern), logged."""
    chosen = set()
    for pattern, (matched, space) in select_by_pattern(names, patterns).items():
        logger.info("--%s %r: %d tensors (matched against %s)", flag, pattern, len(matched), space)
        chosen.update(matched)
    return chosen


def select_trainable(model: torch.nn.Module, cfg: TrainConfig) -> tuple[Params, Params]:
    """(full-lr params, half-lr params) by substring match on the original's names; everything else is frozen."""
    params = dict(model.named_parameters())
    full_names = _matched(list(params), cfg.trainable_modules, "trainable_modules")
    low_names = _matched(list(params), cfg.trainable_modules_low_learning_rate,
                         "trainable_modules_low_learning_rate") - full_names
    full = [p for n, p in params.items() if n in full_names]
    low = [p for n, p in params.items() if n in low_names]
    for param in params.values():
        param.requires_grad_(False)
    for param in full + low:
        param.requires_grad_(True)
    if not full and not low:
        raise ConfigError(f"--trainable_modules {cfg.trainable_modules}: matches no transformer parameter; "
                          "pass '.' to train every parameter.")
    logger.info("trainable parameters: %d tensors at full lr, %d at half lr, %.2fM values",
                len(full), len(low), sum(p.numel() for p in full + low) / 1e6)
    return full, low


def learning_rate(cfg: TrainConfig, world_size: int) -> float:
    if cfg.scale_lr:
        return cfg.learning_rate * cfg.gradient_accumulation_steps * cfg.train_batch_size * world_size
    return cfg.learning_rate


def build_optimizer(params: tuple[list, list], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    full, low = params
    groups = [{"params": full, "lr": lr}]
    if low:
        groups.append({"params": low, "lr": lr / 2})
    if cfg.use_8bit_adam:
        import bitsandbytes as bnb
        optimizer_cls = bnb.optim.AdamW8bit
    elif cfg.use_came:
        from came_pytorch import CAME
        # As the original: CAME with its own betas and eps and no weight decay (the --adam_* flags are AdamW's).
        return CAME(groups, lr=lr, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
    else:
        optimizer_cls = torch.optim.AdamW
    return optimizer_cls(groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
                         eps=cfg.adam_epsilon)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Stepped once per optimizer step by the loop, the same way with and without DeepSpeed."""
    return get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=total_steps)


def clip_threshold(step: int, max_grad_norm: float, decay_steps: int, initial_ratio: float) -> float:
    """The original's decaying clip: initial_ratio x max_grad_norm at step 0, max_grad_norm from decay_steps on."""
    if decay_steps <= 0 or step >= decay_steps:
        return max_grad_norm
    start = max_grad_norm * initial_ratio
    return start + (max_grad_norm - start) * step / decay_steps


def spike_clip(norm: float, threshold: float, step: int, decay_steps: int) -> float:
    """After the decay (from the step after ``decay_steps``, as the original), a norm above 5x the threshold is
    clipped hard to threshold / min(norm / threshold, 10)."""
    if step > decay_steps and norm > 5 * threshold:
        return threshold / min(norm / threshold, 10.0)
    return threshold
