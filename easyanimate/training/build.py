"""Build everything a run needs, in named steps: accelerator, models, data, optimizer, schedule, checkpointer.

The training loop (loop.py) receives a finished ``Run`` and only trains.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration

from easyanimate import distributed, redact
from easyanimate.config import ConfigError, TrainConfig, fingerprint
from easyanimate.data import build_train_dataloader
from easyanimate.models import load_components, load_model_spec
from easyanimate.training import elastic, optim
from easyanimate.training.ema import ShardedEMA
from easyanimate.training.checkpoint import Checkpointer
from easyanimate.training.loss_types import LOSS_TYPES
from easyanimate.training.step import ControlObjective
from easyanimate.training.validation import Validator

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml"}


@dataclass
class Run:
    cfg: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module
    objective: ControlObjective
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    trainable: list
    data: object
    checkpointer: Checkpointer
    validator: Validator
    ema: ShardedEMA | None
    generator: torch.Generator
    steps_per_epoch: int
    max_train_steps: int
    uses_deepspeed: bool
    model_layout: str
    resume_path: Path | None = None  # the checkpoint to continue from (found before anything is sized by it)
    resume_plan: elastic.ResumePlan | None = None


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        # The last block's text-stream outputs (to_add_out, txt_ff) never reach the loss: the text stream is
        # dropped after the last block. DDP must be told, or it waits for their gradients forever.
        # Gradients as views of DDP's buckets: one copy of the gradients instead of two (4 bytes/parameter in fp32).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, gradient_as_bucket_view=True),
                         *_process_group_timeout()],
        log_with=_available_trackers(cfg.report_to),
        project_config=ProjectConfiguration(project_dir=cfg.output_dir,
                                            logging_dir=str(Path(cfg.output_dir) / cfg.logging_dir)),
    )
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def _process_group_timeout() -> list[InitProcessGroupKwargs]:
    """The collective timeout the SLURM layer hands every job (slurm/nccl.py): a dead peer fails a DDP job too,
    not only a DeepSpeed one (which also reads DEEPSPEED_TIMEOUT)."""
    minutes = os.environ.get("EASYANIMATE_COLLECTIVE_TIMEOUT_MIN")
    return [InitProcessGroupKwargs(timeout=timedelta(minutes=float(minutes)))] if minutes else []


def _available_trackers(report_to: str) -> list[str] | None:
    import importlib.util
    wanted = list(TRACKER_PACKAGES) if report_to == "all" else [report_to]
    present = [name for name in wanted if name in TRACKER_PACKAGES and importlib.util.find_spec(TRACKER_PACKAGES[name])]
    for name in set(wanted) - set(present) - {"none"}:
        logger.warning("--report_to %s: package not installed; metrics go to output_dir/%s only", name,
                       "logs/metrics.jsonl")
    return present or None


def uses_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def fill_deepspeed_config(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Resolve the ZeRO JSON's "auto" values from our flags and torch.distributed's world size.

    accelerate would resolve train_batch_size for one process on CPU and cannot see our batch sampler's batch size;
    and the original's JSON had no gradient_clipping, so --max_grad_norm was silently ignored under DeepSpeed.
    """
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.train_batch_size
    ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    ds["train_batch_size"] = cfg.train_batch_size * cfg.gradient_accumulation_steps * distributed.world_size()
    ds["gradient_clipping"] = cfg.max_grad_norm
    precision = accelerator.mixed_precision
    ds.setdefault("bf16", {})["enabled"] = precision == "bf16"
    if precision == "fp16" or "fp16" in ds:
        ds.setdefault("fp16", {})["enabled"] = precision == "fp16"


def transformer_dtype(cfg: TrainConfig, deepspeed: bool, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype the transformer trains in, so it is loaded in it and never sits on the GPU in fp32 first.

    DeepSpeed runs the module in the mixed-precision dtype (its fp32 master weights are its own, sharded: casting
    before is what its engine does at start anyway). Without DeepSpeed: --master_weights_dtype, with accelerate's
    autocast on top.
    """
    if deepspeed:
        if cfg.master_weights_dtype != "fp32":
            logger.warning("--master_weights_dtype %s has no effect under DeepSpeed: ZeRO-2 keeps fp32 master "
                           "weights, sharded across ranks.", cfg.master_weights_dtype)
        return weight_dtype
    if cfg.master_weights_dtype == "bf16":
        if weight_dtype != torch.bfloat16:
            raise ConfigError("--master_weights_dtype bf16 trains bf16 weights under bf16 autocast: add "
                              "--mixed_precision bf16 (and accelerate launch --mixed_precision bf16).")
        return torch.bfloat16
    return torch.float32


def seed_everything(cfg: TrainConfig) -> torch.Generator:
    """Global RNGs for libraries, and this rank's own generator for every random choice of the step."""
    rank = distributed.rank()
    random.seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
    torch.manual_seed(cfg.seed + rank)
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank)


def check_channels(transformer, vae, uses_ref: bool, cfg: TrainConfig) -> None:
    latent = vae.config.latent_channels
    expected = latent * (3 if uses_ref else 2)
    actual = transformer.config.in_channels
    if actual != expected:
        hint = "control_ref" if actual == 3 * latent else "control"
        raise ConfigError(
            f"--train_mode {cfg.train_mode}: the transformer in {cfg.pretrained_model_name_or_path} takes "
            f"{actual} input channels, but {cfg.train_mode} feeds {expected} ({latent} latent channels x "
            f"{'noisy, control, ref' if uses_ref else 'noisy, control'}). Use --train_mode {hint}, or start "
            f"a {cfg.train_mode} model from this base model with --init_from_base_model.")


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    if cfg.max_train_steps is not None:
        return cfg.max_train_steps
    return cfg.num_train_epochs * math.ceil(steps_per_epoch / cfg.gradient_accumulation_steps)


def build_run(cfg: TrainConfig) -> Run:
    accelerator = build_accelerator(cfg)
    deepspeed = uses_deepspeed(accelerator)
    if deepspeed != cfg.use_deepspeed:
        logger.warning("--use_deepspeed is %s but accelerate %s DeepSpeed; following accelerate.",
                       cfg.use_deepspeed, "runs" if deepspeed else "does not run")
    generator = seed_everything(cfg)
    rank, world = distributed.rank(), distributed.world_size()
    # The checkpoint comes first: on another world size it decides the gradient accumulation (elastic.py).
    checkpointer = Checkpointer(cfg.output_dir, total_limit=cfg.checkpoints_total_limit,
                                config_fingerprint=fingerprint(cfg))
    resume_path = checkpointer.find_resume(cfg.resume_from_checkpoint)
    resume_plan = elastic.plan(resume_path, cfg, world) if resume_path is not None else None
    if resume_plan is not None and resume_plan.changed:
        cfg = resume_plan.apply(cfg)
        accelerator.gradient_accumulation_steps = cfg.gradient_accumulation_steps
        if distributed.is_main():
            logger.info("elastic resume from %s: %s", resume_path, resume_plan.describe())
    logger.info("%d processes, %s, mixed precision %s", world, "DeepSpeed ZeRO-2" if deepspeed else "no DeepSpeed",
                accelerator.mixed_precision)
    weight_dtype = WEIGHT_DTYPES[accelerator.mixed_precision]
    spec = load_model_spec(cfg.config_path)
    loss_type = LOSS_TYPES[cfg.loss_type]  # the one place the --loss_type string is read
    components = load_components(cfg, spec, device=accelerator.device, weight_dtype=weight_dtype,
                                 transformer_dtype=transformer_dtype(cfg, deepspeed, weight_dtype),
                                 scheduler=loss_type.scheduler, scheduler_required=loss_type.scheduler_required)
    uses_ref = cfg.train_mode == "control_ref"
    check_channels(components.transformer, components.vae, uses_ref, cfg)
    transformer = components.transformer
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    trainable = optim.select_trainable(transformer, cfg)
    optimizer = optim.build_optimizer(trainable, cfg, optim.learning_rate(cfg, world))

    # uint8 batches: 4x less to copy to the device; the step converts to [-1, 1] there.
    data = build_train_dataloader(cfg, rank=rank, world_size=world, float_pixels=False,
                                  frame_interval=components.vae.config.get("mini_batch_encoder", 4) or 4)
    # Every rank must run the same number of steps, or the collectives of the last steps hang.
    steps_per_epoch = int(distributed.reduce_number(len(data.sampler), "min"))
    if steps_per_epoch == 0:
        raise ConfigError(f"--train_data_meta {cfg.train_data_meta}: no full batch of {cfg.train_batch_size} per "
                          f"rank across {world} ranks; add samples or lower --train_batch_size.")
    max_steps = total_steps(cfg, steps_per_epoch)
    if resume_plan is not None and resume_plan.changed and cfg.max_train_steps is None and resume_plan.max_train_steps:
        max_steps = resume_plan.max_train_steps  # an epoch-derived length is not recounted on the new world size
    lr_scheduler = optim.build_lr_scheduler(optimizer, cfg, max_steps)

    if deepspeed:
        fill_deepspeed_config(accelerator, cfg)
    ema = ShardedEMA(transformer.named_parameters(), rank=rank, world=world) if cfg.use_ema else None
    model, optimizer = accelerator.prepare(transformer, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    if ema is not None:
        ema.register(accelerator)
    init_trackers(accelerator, cfg)
    objective = ControlObjective(cfg, components, loss_type, uses_ref=uses_ref, rank=rank, world_size=world)
    validator = Validator(cfg, components, loss_type.validation_scheduler)
    return Run(cfg=cfg, accelerator=accelerator, model=model, objective=objective, optimizer=optimizer,
               lr_scheduler=lr_scheduler, trainable=trainable[0] + trainable[1], data=data,
               checkpointer=checkpointer, validator=validator, ema=ema, generator=generator,
               steps_per_epoch=steps_per_epoch,
               max_train_steps=max_steps, uses_deepspeed=deepspeed,
               model_layout=components.layout, resume_path=resume_path, resume_plan=resume_plan)


def init_trackers(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Start the trackers; a resumed run continues the same wandb run (its id is kept in output_dir/tracker.json),
    tensorboard continues by writing to the same logging_dir."""
    if not accelerator.log_with:
        return
    record = Path(cfg.output_dir) / "tracker.json"
    saved = json.loads(record.read_text()) if record.exists() else {}
    init_kwargs = {"wandb": {"id": saved["wandb_run_id"], "resume": "allow"}} if "wandb_run_id" in saved else {}
    accelerator.init_trackers(cfg.tracker_project_name, config=_tracker_config(cfg), init_kwargs=init_kwargs)
    if distributed.is_main() and "wandb_run_id" not in saved:
        for tracker in accelerator.trackers:
            if tracker.name == "wandb":
                record.parent.mkdir(parents=True, exist_ok=True)
                record.write_text(json.dumps({"wandb_run_id": tracker.run.id}))


def _tracker_config(cfg: TrainConfig) -> dict:
    """Trackers take scalars only (the original dropped its list-valued flags for the same reason)."""
    return redact.mapping({k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))})
