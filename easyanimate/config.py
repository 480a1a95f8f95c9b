"""Training options: one typed dataclass is the single source of truth.

Every flag of EasyAnimate's ``scripts/train_control.py`` (89 of them) is a field here with the same name,
default and meaning, so the seed's commands and users' existing scripts parse unchanged. The command line is
generated from the fields; ``validate`` checks values once, at start-up, before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin, get_type_hints

from easyanimate import redact

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A flag has a value we cannot train with; the message names the flag and the fix."""


def opt(default: Any, help: str, group: str, *, unused: bool = False, warn_if: Any = None, nargs: str | None = None):
    """A config field with its help text; ``unused`` marks flags the original parses but never reads."""
    meta = {"help": help, "group": group, "unused": unused, "warn_if": warn_if, "nargs": nargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


LossType = Literal["flow", "ddpm", "sigma"]
TrainMode = Literal["control", "control_ref"]
ControlRefImage = Literal["first_frame", "random"]
WeightingScheme = Literal["none", "sigma_sqrt", "logit_normal", "mode", "cosmap"]
MixedPrecision = Literal["no", "fp16", "bf16"]
LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "piecewise_constant", "cosine_with_min_lr", "warmup_stable_decay",
]

M, D, O, L, C, T, R, X = "model and paths", "data", "optimisation", "diffusion objective", "control", "text", \
    "run, checkpoints, logging", "ours (not in the original)"


@dataclass
class TrainConfig:
    # --- model and paths ---
    pretrained_model_name_or_path: Optional[str] = opt(
        None, "Model folder (EasyAnimate's layout or diffusers'): transformer/, vae/, scheduler/, tokenizer/, "
        "text_encoder/ (and tokenizer_2/, text_encoder_2/ for V5); or a hub id org/name, read from the Hugging "
        "Face cache (fetch it once with `hf download org/name`).", M)
    revision: Optional[str] = opt(None, "With a hub id (org/name) in --pretrained_model_name_or_path: the "
                                  "branch, tag or commit to take from the Hugging Face cache.", M)
    variant: Optional[str] = opt(None, "Accepted for compatibility; weights load from the files the folder "
                                 "holds, strictly, whatever their variant.", M, unused=True)
    non_ema_revision: Optional[str] = opt(None, "Accepted for compatibility; unused.", M, unused=True)
    config_path: Optional[str] = opt(
        None, "Model YAML (configs/easyanimate_video_v5.1_magvit_qwen.yaml or "
        "configs/easyanimate_video_v5_magvit_multi_text_encoder.yaml): text encoders, transformer and VAE extras.", M)
    transformer_path: Optional[str] = opt(None, "Extra transformer state dict (.safetensors or .pt) loaded "
                                          "strictly on top of the model folder.", M)
    vae_path: Optional[str] = opt(None, "Extra VAE state dict loaded strictly on top of the model folder.", M)
    output_dir: str = opt("sd-model-finetuned", "Run folder: checkpoints, logs, requeue marker.", M)
    cache_dir: Optional[str] = opt(None, "Accepted for compatibility; unused.", M, unused=True)
    logging_dir: str = opt("logs", "Tracker log folder, relative to output_dir.", M)

    # --- data ---
    train_data_meta: Optional[str] = opt(None, "metadata_control.json (JSON list, JSON lines or CSV) of "
                                         "{file_path, control_file_path, text, type}.", D)
    train_data_dir: Optional[str] = opt(None, "Folder that relative paths in the metadata are joined onto.", D)
    video_repeat: int = opt(0, "How many times each video row is repeated per epoch. The original's default 0 "
                            "drops every video.", D, warn_if=0)
    enable_bucket: bool = opt(False, "Group samples into aspect-ratio buckets and train whole frames "
                              "(no centre crop); every batch comes from one bucket.", D)
    video_sample_size: int = opt(512, "Base video side; the low end of the resolution ladder.", D)
    image_sample_size: int = opt(512, "Base image side; the high end of the resolution ladder.", D)
    token_sample_size: int = opt(512, "Token budget side: a batch holds at most video_sample_n_frames x "
                                 "token_sample_size^2 pixels.", D)
    video_sample_n_frames: int = opt(17, "Frames sampled per clip (trimmed to 4k+1).", D)
    video_sample_stride: int = opt(4, "Spacing between sampled frames.", D)
    random_hw_adapt: bool = opt(False, "Random training resolution per batch between the size limits.", D)
    training_with_video_token_length: bool = opt(False, "Pick video sizes and frame counts under the token "
                                                 "budget; tile small batches up to it.", D)
    random_ratio_crop: bool = opt(False, "With --enable_bucket: crop each batch to one of 15 aspect ratios "
                                  "(h/w 0.42 to 2.4, drawn with EasyAnimate's weights, square-ish ones most often) "
                                  "instead of its samples' own bucket.", D)
    random_frame_crop: bool = opt(False, "Randomly shorten clips (4k+1) to simulate shorter videos.", D)
    keep_all_node_same_token_length: bool = opt(False, "Same token budget on every rank at every step.", D)
    dataloader_num_workers: int = opt(0, "DataLoader worker processes per rank.", D)
    max_train_samples: Optional[int] = opt(None, "Accepted for compatibility; unused.", D, unused=True)
    random_flip: bool = opt(False, "Accepted for compatibility; unused.", D, unused=True)
    enable_text_encoder_in_dataloader: bool = opt(False, "Encode captions inside the DataLoader workers "
                                                  "(CPU) instead of the training process.", D)

    # --- optimisation ---
    train_batch_size: int = opt(16, "Samples per device per micro-step.", O)
    vae_mini_batch: int = opt(32, "Videos per VAE encode call.", O)
    num_train_epochs: int = opt(100, "Epochs; max_train_steps wins when set.", O)
    max_train_steps: Optional[int] = opt(None, "Total optimizer steps; overrides num_train_epochs.", O)
    gradient_accumulation_steps: int = opt(1, "Micro-steps per optimizer step.", O)
    gradient_checkpointing: bool = opt(False, "Recompute transformer blocks in backward to save memory.", O)
    learning_rate: float = opt(1e-4, "Peak learning rate.", O)
    scale_lr: bool = opt(False, "Multiply the learning rate by accumulation x batch x world size.", O)
    lr_scheduler: LrScheduler = opt("constant", "diffusers learning-rate schedule.", O)
    lr_warmup_steps: int = opt(500, "Warm-up length in optimizer steps (not multiplied by the GPU count).", O)
    use_8bit_adam: bool = opt(False, "bitsandbytes AdamW8bit (needs bitsandbytes).", O)
    use_came: bool = opt(False, "CAME optimizer (needs came-pytorch).", O)
    adam_beta1: float = opt(0.9, "AdamW beta1.", O)
    adam_beta2: float = opt(0.999, "AdamW beta2.", O)
    adam_weight_decay: float = opt(1e-2, "AdamW weight decay.", O)
    adam_epsilon: float = opt(1e-8, "AdamW epsilon.", O)
    max_grad_norm: float = opt(1.0, "Gradient clipping norm, with and without DeepSpeed.", O)
    abnormal_norm_clip_start: int = opt(1000, "Steps over which the clip threshold decays from "
                                        "initial_grad_norm_ratio x max_grad_norm to max_grad_norm.", O)
    initial_grad_norm_ratio: int = opt(5, "Starting multiple of max_grad_norm for the decaying clip.", O)
    trainable_modules: list[str] = opt(["."], "Substrings of EasyAnimate's transformer parameter names to train "
                                       "('.' = all; attn2 = the text stream's attention, as in the original); a "
                                       "substring found in none of them is matched against diffusers' names. "
                                       "Counts are logged.", O, nargs="+")
    trainable_modules_low_learning_rate: list[str] = opt([], "Substrings trained at half the learning rate.",
                                                         O, nargs="*")
    use_ema: bool = opt(False, "Keep an exponential moving average of the transformer.", O)
    allow_tf32: bool = opt(False, "Allow TF32 matmuls and convolutions on Ampere+ GPUs.", O)
    enable_xformers_memory_efficient_attention: bool = opt(False, "No effect on V5/V5.1 (as in the "
                                                           "original).", O, unused=True)
    multi_stream: bool = opt(False, "Accepted for compatibility; VAE encodes run on the default stream.", O,
                             unused=True)
    low_vram: bool = opt(False, "Keep the VAE and text encoders on CPU except while they run.", O)

    # --- diffusion objective ---
    loss_type: LossType = opt("sigma", "flow (V5.1), ddpm (V5, V4) or sigma (V1-V3: epsilon MSE on a fixed "
                              "1000-step linear-beta schedule; the original's learned-variance bound term is not "
                              "computed, V5/V5.1 have no variance head).", L, warn_if="sigma")
    train_sampling_steps: int = opt(1000, "ddpm: timesteps are drawn from [0, N), at most the scheduler's "
                                    "length; sigma: the 1000-step schedule respaced to N steps (N <= 1000); no "
                                    "effect with flow (as in the original).", L)
    uniform_sampling: bool = opt(False, "Stratify timesteps across ranks: rank r draws from its own interval.", L)
    weighting_scheme: WeightingScheme = opt("none", "flow: timestep density and loss weight (SD3).", L)
    logit_mean: float = opt(0.0, "Mean of the logit_normal scheme.", L)
    logit_std: float = opt(1.0, "Std of the logit_normal scheme.", L)
    mode_scale: float = opt(1.29, "Scale of the mode scheme.", L)
    snr_loss: bool = opt(False, "sigma loss: x0 target for t <= 249.", L)
    prediction_type: Optional[str] = opt(None, "Accepted for compatibility; the scheduler config decides.", L,
                                         unused=True)
    noise_offset: float = opt(0.0, "Accepted for compatibility; unused (as in the original).", L, unused=True)
    input_perturbation: float = opt(0.0, "Accepted for compatibility; unused.", L, unused=True)
    noise_share_in_frames: bool = opt(False, "Correlate noise along time.", L)
    noise_share_in_frames_ratio: float = opt(0.5, "Weight of the previous frame's noise.", L)
    motion_sub_loss: bool = opt(False, "Add an MSE on frame-to-frame differences.", L)
    motion_sub_loss_ratio: float = opt(0.25, "Weight of the motion sub-loss.", L)

    # --- control ---
    train_mode: TrainMode = opt("control", "control: condition on the control video; control_ref: also on a "
                                "reference frame (V5.1).", C)
    control_ref_image: ControlRefImage = opt("first_frame", "Which frame of the clip is the reference.", C)

    # --- text ---
    tokenizer_max_length: int = opt(256, "Padded text length (Qwen: including the chat template).", T)

    # --- run, checkpoints, logging ---
    use_deepspeed: bool = opt(False, "Script-side switch matching `accelerate launch --use_deepspeed`.", R)
    mixed_precision: Optional[MixedPrecision] = opt(None, "Overrides accelerate's mixed precision.", R)
    local_rank: int = opt(-1, "Set by the launcher; ranks come from torch.distributed.", R)
    seed: Optional[int] = opt(None, "Base seed; each rank derives its own streams from it.", R)
    checkpointing_steps: int = opt(500, "Save a checkpoint every N optimizer steps.", R)
    checkpoints_total_limit: Optional[int] = opt(None, "Keep at most N complete checkpoints (never fewer "
                                                 "than one).", R)
    resume_from_checkpoint: Optional[str] = opt(None, "'latest' or a checkpoint folder to resume from.", R)
    validation_prompts: Optional[list[str]] = opt(None, "Prompts for validation videos.", R, nargs="+")
    validation_paths: Optional[list[str]] = opt(None, "Control videos paired with validation_prompts.", R,
                                                nargs="+")
    validation_steps: int = opt(2000, "Validate every N optimizer steps.", R)
    validation_epochs: int = opt(5, "Validate every N epochs.", R)
    report_to: str = opt("tensorboard", "Tracker: tensorboard, wandb, comet_ml, all or none.", R)
    tracker_project_name: str = opt("text2image-fine-tune", "Tracker project name.", R)
    report_model_info: bool = opt(False, "Accepted for compatibility; the gradient norm is always logged "
                                  "(logs/metrics.jsonl), per-tensor norms are not written.", R, unused=True)
    push_to_hub: bool = opt(False, "Accepted for compatibility; unused.", R, unused=True)
    hub_model_id: Optional[str] = opt(None, "Accepted for compatibility; unused.", R, unused=True)
    hub_token: Optional[str] = opt(None, "Accepted for compatibility; unused.", R, unused=True)

    # --- ours ---
    max_bad_sample_fraction: float = opt(0.01, "Stop with an error once more than this fraction of loaded "
                                         "samples failed to decode.", X)
    text_drop_ratio: float = opt(0.1, "Probability that a caption is replaced by '' (for CFG).", X)
    control_drop_ratio: float = opt(0.2, "Probability that a sample's control latent is zeroed.", X)
    ref_drop_ratio: float = opt(0.2, "Probability that a sample's reference latent is zeroed.", X)
    sample_ledger: bool = opt(False, "Write every trained sample id per rank to output_dir/ledger/ (audits "
                              "exact resume).", X)
    init_from_base_model: bool = opt(False, "Start a control model from a base model (T2V, InP) whose patch "
                                     "embedding takes another number of input channels: the transformer is built "
                                     "with the channels --train_mode feeds, the base weights' extra channels are "
                                     "zero-filled (or the surplus cut off), logged; every other tensor must match "
                                     "exactly. EasyAnimate's loader did this silently.", X)
    save_on_signal: bool = opt(True, "On SIGTERM/SIGUSR1/SIGUSR2: checkpoint at the next step boundary, leave "
                               "a requeue marker and exit with the requeue code.", X)
    validation_ref_paths: Optional[list[str]] = opt(
        None, "Reference images (or videos: the frame where the control clip starts) paired with "
        "validation_paths, for --train_mode control_ref. Default: that frame of the training video whose control "
        "video the validation path is.", X, nargs="+")
    log_every_s: float = opt(30.0, "Rank 0 logs a `step N/TOTAL` progress line at least this often (seconds) "
                             "when the output is not a terminal (a terminal gets a tqdm bar).", X)
    master_weights_dtype: Literal["fp32", "bf16"] = opt(
        "fp32", "Without DeepSpeed: dtype of the trained transformer weights, their gradients and the Adam moments. "
        "fp32 (default): ~18 bytes/parameter with bf16 autocast (about 210 GB for the 12B transformer: no single "
        "GPU). bf16: the original's footprint, ~8 bytes/parameter (about 95 GB: one H200), but updates smaller "
        "than bf16's resolution are lost. Under DeepSpeed ZeRO-2 the master weights are always fp32, sharded. "
        "`easyanimate memory-plan` shows what fits.", X)
    checkpointing_async: bool = opt(True, "Periodic checkpoints (every --checkpointing_steps) are staged in host "
                                    "memory and copied, written, fsynced and committed by a background thread "
                                    "while training goes on (costs host RAM of one checkpoint per rank, kept for "
                                    "the run; the save after a signal and the last one are always synchronous). "
                                    "false: every save blocks training until it is on disk.", X)

    @property
    def model_folder(self) -> Path:
        """The local model folder (a hub id resolves to its cached snapshot)."""
        from easyanimate.hub import resolve_model_folder
        return resolve_model_folder(self.pretrained_model_name_or_path, self.revision)


FIELD_HINTS = get_type_hints(TrainConfig)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def _scalar_type(hint: Any) -> tuple[type, tuple | None]:
    """Python type used to parse one value, plus its allowed choices."""
    if get_origin(hint) is Optional or (get_origin(hint) is not None and type(None) in get_args(hint)):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is Literal:
        return str, get_args(hint)
    if get_origin(hint) is list:
        return get_args(hint)[0], None
    return hint, None


def build_parser() -> argparse.ArgumentParser:
    """argparse parser generated from TrainConfig's fields, grouped as in the original's docs."""
    parser = argparse.ArgumentParser(
        prog="train_control", description="Train an EasyAnimate V5/V5.1 control model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        hint = FIELD_HINTS[f.name]
        help_text = meta["help"] + (" [unused]" if meta["unused"] else "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if hint is bool:
            group.add_argument(f"--{f.name}", nargs="?", const=True, default=default, type=_bool, help=help_text)
            continue
        scalar, choices = _scalar_type(hint)
        group.add_argument(f"--{f.name}", type=scalar, choices=choices, nargs=meta["nargs"], default=default,
                           help=help_text)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags -> TrainConfig (no validation of files; see ``validate``). Secret flags the job's launcher kept off
    the command line come from the environment (``easyanimate.redact``)."""
    namespace = build_parser().parse_args([*(sys.argv[1:] if argv is None else argv), *redact.secret_args()])
    cfg = TrainConfig(**vars(namespace))
    env_rank = os.environ.get("LOCAL_RANK")
    if env_rank is not None:
        cfg.local_rank = int(env_rank)
    return cfg


def changed_unused_flags(cfg: TrainConfig) -> list[str]:
    """Flags the original accepts but never reads, set away from their default."""
    names = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.metadata["unused"] and getattr(cfg, f.name) != default:
            names.append(f.name)
    return names


def _require(condition: bool, flag: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"--{flag}: {message}")


def validate(cfg: TrainConfig) -> list[str]:
    """Check values and files before anything heavy runs. Returns warnings; raises ConfigError on errors."""
    _require(cfg.pretrained_model_name_or_path is not None, "pretrained_model_name_or_path",
             "is required: point it at a model folder (see `easyanimate make-tiny-model`).")
    from easyanimate.hub import HubModelNotCached
    try:
        model = cfg.model_folder
    except HubModelNotCached as error:
        raise ConfigError(str(error)) from None
    _require(model.is_dir(), "pretrained_model_name_or_path", f"{model} is not a folder (nor a hub id org/name).")
    _require((model / "transformer").is_dir(), "pretrained_model_name_or_path",
             f"{model} has no transformer/ subfolder; pass the model root (the folder holding transformer/, "
             "vae/, text_encoder/, tokenizer/, scheduler/).")
    _require(cfg.config_path is not None, "config_path",
             "is required: pass configs/easyanimate_video_v5.1_magvit_qwen.yaml (V5.1) or "
             "configs/easyanimate_video_v5_magvit_multi_text_encoder.yaml (V5).")
    _require(Path(cfg.config_path).is_file(), "config_path", f"{cfg.config_path} does not exist.")
    _require(cfg.train_data_meta is not None, "train_data_meta", "is required: the metadata_control.json file.")
    meta = Path(cfg.train_data_meta)
    _require(meta.is_file(), "train_data_meta", f"{meta} does not exist; check the path (relative paths are "
             "taken from the current directory).")
    if cfg.train_data_dir is not None:
        _require(Path(cfg.train_data_dir).is_dir(), "train_data_dir", f"{cfg.train_data_dir} is not a folder.")
    for name in ("train_batch_size", "gradient_accumulation_steps", "video_sample_n_frames", "video_sample_stride",
                 "checkpointing_steps", "vae_mini_batch", "train_sampling_steps", "tokenizer_max_length"):
        _require(getattr(cfg, name) >= 1, name, f"must be >= 1, got {getattr(cfg, name)}.")
    for name in ("video_sample_size", "image_sample_size", "token_sample_size"):
        _require(getattr(cfg, name) % 16 == 0, name, f"must be a multiple of 16, got {getattr(cfg, name)}.")
    _require(cfg.loss_type != "sigma" or cfg.train_sampling_steps <= 1000, "train_sampling_steps",
             f"--loss_type sigma respaces a 1000-step schedule; {cfg.train_sampling_steps} steps cannot be taken "
             "from it. Pass at most 1000.")
    _require(cfg.video_repeat >= 0, "video_repeat", "must be >= 0.")
    _require(cfg.dataloader_num_workers >= 0, "dataloader_num_workers", "must be >= 0.")
    _require(cfg.max_train_steps is None or cfg.max_train_steps >= 1, "max_train_steps", "must be >= 1.")
    _require(cfg.checkpoints_total_limit is None or cfg.checkpoints_total_limit >= 1, "checkpoints_total_limit",
             "must be >= 1 (the newest complete checkpoint is always kept).")
    _require(0.0 <= cfg.max_bad_sample_fraction <= 1.0, "max_bad_sample_fraction", "must be in [0, 1].")
    _require(cfg.log_every_s > 0, "log_every_s", f"must be > 0 seconds, got {cfg.log_every_s}.")
    _require(cfg.seed is not None, "seed", "is required for reproducible, resumable training: pass --seed=42.")
    if cfg.validation_paths is not None:
        _require(cfg.validation_prompts is not None and len(cfg.validation_prompts) == len(cfg.validation_paths),
                 "validation_paths", "needs one --validation_prompts entry per control video.")
    if cfg.validation_ref_paths is not None:
        _require(cfg.validation_paths is not None and len(cfg.validation_ref_paths) == len(cfg.validation_paths),
                 "validation_ref_paths", "needs one --validation_paths control video per reference image.")
    _require(cfg.master_weights_dtype == "fp32" or cfg.mixed_precision == "bf16", "master_weights_dtype",
             "bf16 master weights train under bf16 autocast: add --mixed_precision bf16.")
    if cfg.use_8bit_adam:
        _require(_importable("bitsandbytes"), "use_8bit_adam", "needs bitsandbytes: pip install bitsandbytes.")
    if cfg.use_came:
        _require(_importable("came_pytorch"), "use_came", "needs came-pytorch: pip install came-pytorch.")
    return _warnings(cfg)


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _warnings(cfg: TrainConfig) -> list[str]:
    warnings = [f"--{name} is accepted for compatibility with EasyAnimate's trainer but has no effect."
                for name in changed_unused_flags(cfg)]
    if cfg.loss_type == "sigma":
        warnings.append("--loss_type is 'sigma' (the original's default, meant for V1-V3). V5.1 trains with "
                        "--loss_type=flow and V5 with --loss_type=ddpm.")
    if cfg.video_repeat == 0:
        warnings.append("--video_repeat is 0: every video row is dropped and only images train. Pass "
                        "--video_repeat=1 to train on videos.")
    if not cfg.enable_bucket:
        warnings.append("--enable_bucket is off: every sample is centre-cropped to a square.")
        if cfg.random_ratio_crop:
            warnings.append("--random_ratio_crop has no effect without --enable_bucket (as in the original).")
    if cfg.loss_type == "flow" and cfg.train_sampling_steps != 1000:
        warnings.append("--train_sampling_steps has no effect with --loss_type flow (as in the original).")
    if cfg.loss_type == "ddpm" and cfg.train_sampling_steps < 1000:
        warnings.append(f"--train_sampling_steps {cfg.train_sampling_steps} with --loss_type ddpm trains only "
                        f"timesteps below {cfg.train_sampling_steps} (the index is the timestep, as in the "
                        "original).")
    return warnings


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# Flags that may change between a run and its resume without changing what is being trained.
RESUME_NEUTRAL = {
    "resume_from_checkpoint", "max_train_steps", "num_train_epochs", "checkpointing_steps",
    "checkpoints_total_limit", "dataloader_num_workers", "validation_prompts", "validation_paths",
    "validation_steps", "validation_epochs", "report_to", "report_model_info", "local_rank", "output_dir",
    "logging_dir", "sample_ledger", "save_on_signal", "checkpointing_async", "low_vram", "tracker_project_name",
    "log_every_s", "validation_ref_paths",
}


def fingerprint(cfg: TrainConfig) -> str:
    """Short hash of every option that changes what is trained; stored in checkpoint manifests."""
    import hashlib
    import json
    relevant = {k: v for k, v in to_dict(cfg).items() if k not in RESUME_NEUTRAL}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]
