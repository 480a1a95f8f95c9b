"""Load everything a run needs from a model folder, in either layout, strictly, before training starts.

The transformer and VAE are diffusers' classes in both layouts. Their effective config is the folder's
config.json plus the model YAML's ``transformer_additional_kwargs`` / ``vae_kwargs`` (as EasyAnimate's trainer
applies them), with EasyAnimate's own defaults for absent keys in an original-layout folder. Weights are loaded
strictly (see ``weights.py``); a partial load raises before any training step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLMagvit, DDPMScheduler, EasyAnimateTransformer3DModel, \
    FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from easyanimate.config import TrainConfig
from easyanimate.models import original
from easyanimate.models.layout import Layout, detect_layout
from easyanimate.models.spec import ModelSpec
from easyanimate.models.text import TextEncoder
from easyanimate.models.weights import StrictLoadError, build_strict, load_into, read_state_dict

logger = logging.getLogger(__name__)

@dataclass
class Components:
    transformer: EasyAnimateTransformer3DModel
    vae: AutoencoderKLMagvit
    text_encoder: TextEncoder
    noise_scheduler: FlowMatchEulerDiscreteScheduler | DDPMScheduler | None
    layout: Layout


def _read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _second_stream_rule(kwargs: dict, state: dict, spec: ModelSpec, where: str) -> None:
    """Match the transformer's second text projection to the text encoders the YAML asks for."""
    has_t5_proj = kwargs.get("text_embed_dim_t5") is not None
    if spec.has_second_text_encoder and not has_t5_proj:
        raise original.ConfigNotHonoured(
            f"{where}: the model YAML has two text encoders but text_embed_dim_t5 is null, so the transformer "
            "cannot take the second one; use the single-encoder YAML or a two-encoder model.")
    if not spec.has_second_text_encoder and has_t5_proj:
        unused = sorted(k for k in state if k.startswith("text_proj_t5."))
        # EasyAnimate's class builds text_proj_t5 by default even for one text encoder; it is never used then.
        logger.info("%s: one text encoder, so text_embed_dim_t5=%s and tensors %s are unused: dropped",
                    where, kwargs["text_embed_dim_t5"], unused)
        kwargs["text_embed_dim_t5"] = None
        for key in unused:
            del state[key]


def _subfolder(folder: str | Path, name: str, layout: Layout | None) -> tuple[Path, bool, str]:
    """(the component's folder, whether it is in the original layout, how errors name it)."""
    layout = layout or detect_layout(folder)
    sub = Path(folder) / name
    return sub, layout == "original", f"{sub} ({layout} layout)"


PATCH_EMBEDDING = "proj.weight"  # the first conv: (width, in_channels, patch, patch), same name in both layouts


def adapt_input_channels(state: dict[str, torch.Tensor], in_channels: int, where: str) -> None:
    """``--init_from_base_model``: zero-fill the patch embedding's missing input channels, or cut the surplus."""
    weight = state[PATCH_EMBEDDING]
    have = weight.shape[1]
    if have == in_channels:
        return
    if have < in_channels:
        extra = weight.new_zeros(weight.shape[0], in_channels - have, *weight.shape[2:])
        state[PATCH_EMBEDDING] = torch.cat([weight, extra], dim=1)
        how = f"channels {have}..{in_channels - 1} zero-filled"
    else:
        state[PATCH_EMBEDDING] = weight[:, :in_channels].clone()
        how = f"channels {in_channels}..{have - 1} cut off"
    logger.warning("%s: --init_from_base_model: %s %s -> %s (%s); every other tensor loads unchanged",
                   where, PATCH_EMBEDDING, tuple(weight.shape), tuple(state[PATCH_EMBEDDING].shape), how)


def load_transformer(folder: str | Path, spec: ModelSpec, *, layout: Layout | None = None,
                     dtype: torch.dtype = torch.float32, in_channels: int | None = None
                     ) -> EasyAnimateTransformer3DModel:
    """The transformer, strictly. ``in_channels`` (``--init_from_base_model``) builds it with that many input
    channels and adapts the patch embedding of a base model's weights to it."""
    sub, is_original, where = _subfolder(folder, "transformer", layout)
    kwargs = original.transformer_kwargs(_read_config(sub), spec.transformer_additional_kwargs,
                                         original=is_original, where=where)
    state = read_state_dict(sub)
    if is_original:
        state = original.to_diffusers_layout(state)
    _second_stream_rule(kwargs, state, spec, where)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
        adapt_input_channels(state, in_channels, where)
    try:
        return build_strict(EasyAnimateTransformer3DModel, kwargs, state, dtype=dtype, where=where)
    except StrictLoadError as error:
        if PATCH_EMBEDDING in state and state[PATCH_EMBEDDING].shape[1] != kwargs.get("in_channels"):
            raise StrictLoadError(f"{error} To start a control model from a base model whose patch embedding "
                                  "takes other input channels, pass --init_from_base_model.") from None
        raise


def load_vae(folder: str | Path, spec: ModelSpec, *, layout: Layout | None = None,
             dtype: torch.dtype = torch.float32) -> AutoencoderKLMagvit:
    sub, is_original, where = _subfolder(folder, "vae", layout)
    kwargs = original.vae_kwargs(_read_config(sub), spec.vae_kwargs, original=is_original, where=where)
    vae = build_strict(AutoencoderKLMagvit, kwargs, read_state_dict(sub), dtype=dtype, where=where)
    return vae.requires_grad_(False).eval()


def load_scheduler(folder: str | Path, cls: type[SchedulerMixin], *, required: bool = True):
    """A ``cls`` built from the folder's scheduler/ config (the --loss_type table says which class), or None
    when the folder has none and the loss does not need one."""
    sub = Path(folder) / "scheduler"
    if not (sub / "scheduler_config.json").is_file():
        if not required:
            return None
        raise StrictLoadError(f"{sub}: no scheduler_config.json; the loss type reads its noise schedule "
                              f"({cls.__name__}) from there.")
    saved = json.loads((sub / "scheduler_config.json").read_text()).get("_class_name")
    if saved != cls.__name__:
        logger.warning("%s holds a %s config; the loss type builds a %s from it (as EasyAnimate's trainer does).",
                       sub, saved, cls.__name__)
    return cls.from_config(cls.load_config(sub))


def _apply_extra_weights(model: torch.nn.Module, path: str | None, *, transformer: bool) -> None:
    """``--transformer_path`` / ``--vae_path``: a state dict loaded strictly on top of the folder's weights."""
    if path is None:
        return
    state = read_state_dict(Path(path))
    if transformer and original.is_original_transformer_state_dict(state):
        state = original.to_diffusers_layout(state)
    dtype = next(model.parameters()).dtype
    load_into(model, {k: v.to(dtype) for k, v in state.items()}, where=str(path))
    logger.info("loaded %s strictly on top of the model folder", path)


def _control_channels(vae: AutoencoderKLMagvit, cfg: TrainConfig) -> int:
    """Input channels --train_mode feeds: latent channels x (noisy, control[, ref])."""
    return vae.config.latent_channels * (3 if cfg.train_mode == "control_ref" else 2)


def load_components(cfg: TrainConfig, spec: ModelSpec, *, device, weight_dtype: torch.dtype,
                    transformer_dtype: torch.dtype = torch.float32,
                    scheduler: type[SchedulerMixin] | None = None, scheduler_required: bool = True) -> Components:
    """Everything from the model folder; ``scheduler`` (None: none loaded) and ``scheduler_required`` come from
    the --loss_type table. ``transformer_dtype``: the dtype it trains in; it is cast on the CPU, so it reaches
    ``device`` in it."""
    folder = cfg.model_folder
    layout = detect_layout(folder)
    logger.info("model folder %s: %s layout", folder, layout)
    vae = load_vae(folder, spec, layout=layout, dtype=weight_dtype)
    _apply_extra_weights(vae, cfg.vae_path, transformer=False)
    in_channels = _control_channels(vae, cfg) if cfg.init_from_base_model else None
    transformer = load_transformer(folder, spec, layout=layout, dtype=transformer_dtype, in_channels=in_channels)
    _apply_extra_weights(transformer, cfg.transformer_path, transformer=True)
    text_encoder = TextEncoder.from_folder(
        folder, spec, device=device, dtype=weight_dtype, max_length=cfg.tokenizer_max_length,
        use_attention_mask=bool(transformer.config.enable_text_attention_mask),
        offload=cfg.low_vram or cfg.enable_text_encoder_in_dataloader)
    noise_scheduler = scheduler and load_scheduler(folder, scheduler, required=scheduler_required)
    return Components(transformer=transformer.to(device), vae=vae.to(device), text_encoder=text_encoder,
                      noise_scheduler=noise_scheduler, layout=layout)
