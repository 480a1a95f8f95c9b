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

from easyanimate.config import TrainConfig
from easyanimate.models import original
from easyanimate.models.layout import Layout, detect_layout
from easyanimate.models.spec import ModelSpec
from easyanimate.models.text import TextEncoder
from easyanimate.models.weights import StrictLoadError, build_strict, load_into, read_state_dict

logger = logging.getLogger(__name__)

SCHEDULERS = {"flow": FlowMatchEulerDiscreteScheduler, "ddpm": DDPMScheduler, "sigma": DDPMScheduler}


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


def load_transformer(folder: str | Path, spec: ModelSpec, *, layout: Layout | None = None,
                     dtype: torch.dtype = torch.float32) -> EasyAnimateTransformer3DModel:
    sub, is_original, where = _subfolder(folder, "transformer", layout)
    kwargs = original.transformer_kwargs(_read_config(sub), spec.transformer_additional_kwargs,
                                         original=is_original, where=where)
    state = read_state_dict(sub)
    if is_original:
        state = original.to_diffusers_layout(state)
    _second_stream_rule(kwargs, state, spec, where)
    return build_strict(EasyAnimateTransformer3DModel, kwargs, state, dtype=dtype, where=where)


def load_vae(folder: str | Path, spec: ModelSpec, *, layout: Layout | None = None,
             dtype: torch.dtype = torch.float32) -> AutoencoderKLMagvit:
    sub, is_original, where = _subfolder(folder, "vae", layout)
    kwargs = original.vae_kwargs(_read_config(sub), spec.vae_kwargs, original=is_original, where=where)
    vae = build_strict(AutoencoderKLMagvit, kwargs, read_state_dict(sub), dtype=dtype, where=where)
    return vae.requires_grad_(False).eval()


def load_scheduler(folder: str | Path, loss_type: str):
    """The training scheduler from scheduler/ (flow matching for ``flow``, DDPM for ``ddpm`` and ``sigma``)."""
    sub = Path(folder) / "scheduler"
    if not (sub / "scheduler_config.json").is_file():
        if loss_type == "sigma":
            return None
        raise StrictLoadError(f"{sub}: no scheduler_config.json; --loss_type {loss_type} reads its noise "
                              "schedule from there.")
    cls = SCHEDULERS[loss_type]
    saved = json.loads((sub / "scheduler_config.json").read_text()).get("_class_name")
    if saved != cls.__name__:
        logger.warning("%s holds a %s config; --loss_type %s builds a %s from it (as EasyAnimate's trainer does).",
                       sub, saved, loss_type, cls.__name__)
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


def load_components(cfg: TrainConfig, spec: ModelSpec, *, device, weight_dtype: torch.dtype,
                    transformer_dtype: torch.dtype = torch.float32) -> Components:
    """``transformer_dtype``: the dtype it trains in; it is cast on the CPU, so it reaches ``device`` in it."""
    folder = cfg.model_folder
    layout = detect_layout(folder)
    logger.info("model folder %s: %s layout", folder, layout)
    transformer = load_transformer(folder, spec, layout=layout, dtype=transformer_dtype)
    _apply_extra_weights(transformer, cfg.transformer_path, transformer=True)
    vae = load_vae(folder, spec, layout=layout, dtype=weight_dtype)
    _apply_extra_weights(vae, cfg.vae_path, transformer=False)
    text_encoder = TextEncoder.from_folder(
        folder, spec, device=device, dtype=weight_dtype, max_length=cfg.tokenizer_max_length,
        use_attention_mask=bool(transformer.config.enable_text_attention_mask),
        offload=cfg.low_vram or cfg.enable_text_encoder_in_dataloader)
    return Components(transformer=transformer.to(device), vae=vae.to(device),
                      text_encoder=text_encoder, noise_scheduler=load_scheduler(folder, cfg.loss_type),
                      layout=layout)
