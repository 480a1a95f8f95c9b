"""EasyAnimate's original model layout, mapped explicitly onto diffusers' classes, and back.

The facts (measured against EasyAnimate's own classes, see reference/diffusers_easyanimate_notes.md):
- transformer weights differ by six renames inside every block (the text stream's attention);
- VAE weights are identical;
- both configs carry keys diffusers' classes do not take, and an absent key means the ORIGINAL class's default.

Every config key that diffusers' class does not take has a rule here: either it provably does not change the
computation (dropped, and logged), or it must hold one value (anything else raises ``ConfigNotHonoured`` naming
the key). A key without a rule is an error too, so nothing is dropped silently.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKLMagvit, EasyAnimateTransformer3DModel
from safetensors.torch import save_file

logger = logging.getLogger(__name__)


class ConfigNotHonoured(ValueError):
    """A config key would change the computation in a way diffusers' class cannot express."""


# --- weights -------------------------------------------------------------------------------------------------
# Inside transformer_blocks.N.: original name -> diffusers name.
TRANSFORMER_RENAMES: tuple[tuple[str, str], ...] = (
    ("attn2.to_q.", "attn1.add_q_proj."),
    ("attn2.to_k.", "attn1.add_k_proj."),
    ("attn2.to_v.", "attn1.add_v_proj."),
    ("attn2.to_out.0.", "attn1.to_add_out."),
    ("attn2.norm_q.", "attn1.norm_added_q."),
    ("attn2.norm_k.", "attn1.norm_added_k."),
)
_BLOCK = re.compile(r"^(transformer_blocks\.\d+\.)(.*)$")


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    match = _BLOCK.match(key)
    if match is None:
        return key
    prefix, rest = match.groups()
    for old, new in pairs:
        if rest.startswith(old):
            return prefix + new + rest[len(old):]
    return key


def to_diffusers_layout(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Original transformer state dict -> diffusers' ``EasyAnimateTransformer3DModel`` names."""
    return {_rename(k, TRANSFORMER_RENAMES): v for k, v in state_dict.items()}


def to_original_layout(state_dict: dict[str, Any]) -> dict[str, Any]:
    """diffusers transformer state dict -> the names EasyAnimate's own class loads (inverse of the above)."""
    inverse = tuple((new, old) for old, new in TRANSFORMER_RENAMES)
    return {_rename(k, inverse): v for k, v in state_dict.items()}


def original_name(name: str) -> str:
    """EasyAnimate's name for one of diffusers' transformer parameter names."""
    return _rename(name, tuple((new, old) for old, new in TRANSFORMER_RENAMES))


def select_by_pattern(names: list[str], patterns: list[str]) -> dict[str, tuple[list[str], str]]:
    """pattern -> (the diffusers names it selects, which names it was matched against).

    ``--trainable_modules`` keeps the original's meaning: a pattern is a substring of EasyAnimate's own parameter
    names (``attn2`` is the text stream's attention there). Only a pattern that matches none of those (such as
    diffusers' ``add_q_proj``) is matched against diffusers' names.
    """
    selected = {}
    for pattern in patterns:
        by_original = [n for n in names if pattern in original_name(n)]
        selected[pattern] = (by_original, "EasyAnimate's names") if by_original else \
            ([n for n in names if pattern in n], "diffusers' names")
    return selected


def is_original_transformer_state_dict(keys) -> bool:
    return any(_BLOCK.match(k) and _BLOCK.match(k).group(2).startswith("attn2.") for k in keys)


# --- config defaults -----------------------------------------------------------------------------------------
# Where the original class's default differs from diffusers' (or the key is the original's own): an original
# config.json without the key means this value.
ORIGINAL_TRANSFORMER_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 30, "num_layers": 30, "mmdit_layers": 10000, "text_embed_dim": 4096,
    "text_embed_dim_t5": 4096, "resize_inpaint_mask_directly": False, "add_noise_in_inpaint_model": False,
    "ref_channels": None, "clip_channels": None, "swa_layers": None, "enable_clip_in_inpaint": True,
    "position_of_clip_embedding": "full", "add_ref_latent_in_control_model": False,
}
ORIGINAL_VAE_DEFAULTS: dict[str, Any] = {
    "latent_channels": 4, "scaling_factor": 0.1825, "spatial_group_norm": False,
    "cache_mag_vae": False, "mini_batch_encoder": 9, "mini_batch_decoder": 3, "slice_mag_vae": True,
    "use_tiling": False, "use_tiling_encoder": False, "use_tiling_decoder": False, "upcast_vae": False,
}


# --- config rules --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """``ok(config)`` is true when the key can be dropped (or kept) without changing the computation."""

    ok: Callable[[dict], bool]
    why: str


def _is(key: str, value: Any) -> Callable[[dict], bool]:
    return lambda c: c.get(key, value) == value


def _no_clip(c: dict) -> bool:
    return c.get("clip_channels") is None


TRANSFORMER_RULES: dict[str, Rule] = {
    "transformer_type": Rule(_is("transformer_type", "EasyAnimateTransformer3DModel"),
                             "must name EasyAnimateTransformer3DModel (V5/V5.1); other classes are not supported"),
    "add_ref_latent_in_control_model": Rule(lambda c: True, "the reference latent enters through the control "
                                            "channels in both classes (in_channels = 3 x latent)"),
    "clip_channels": Rule(_is("clip_channels", None), "must be null: diffusers' class has no CLIP projection"),
    "ref_channels": Rule(_is("ref_channels", None), "must be null: diffusers' class has no ref_proj branch"),
    "swa_layers": Rule(_is("swa_layers", None), "must be null: diffusers' class has no sliding-window attention"),
    "enable_clip_in_inpaint": Rule(_no_clip, "only used by inpaint models with clip_channels"),
    "position_of_clip_embedding": Rule(_no_clip, "only used by inpaint models with clip_channels"),
    "time_position_encoding_type": Rule(_is("time_position_encoding_type", "3d_rope"),
                                        "must be 3d_rope: diffusers' class always applies the 3D RoPE"),
}


def _no_tiling(c: dict) -> bool:
    return not any(c.get(k, False) for k in ("use_tiling", "use_tiling_encoder", "use_tiling_decoder"))


def _no_mid_attention(c: dict) -> bool:
    return not c.get("mid_block_use_attention", False) or c.get("layers_per_block", 2) <= 1


_CACHED = "no effect when cache_mag_vae is true (the original then encodes exactly like diffusers' class)"
VAE_RULES: dict[str, Rule] = {
    "vae_type": Rule(_is("vae_type", "AutoencoderKLMagvit"), "must name AutoencoderKLMagvit"),
    "cache_mag_vae": Rule(_is("cache_mag_vae", True), "must be true: diffusers' class encodes the first frame "
                          "alone, then cached chunks, which is the original's cache_mag_vae path"),
    "mini_batch_encoder": Rule(_is("mini_batch_encoder", 4), "must be 4: diffusers' class encodes 4-frame chunks"),
    "mini_batch_decoder": Rule(_is("mini_batch_decoder", 1), "must be 1: diffusers' class decodes 1 latent frame "
                               "at a time"),
    "slice_mag_vae": Rule(_is("cache_mag_vae", True), _CACHED),
    "slice_compression_vae": Rule(_is("cache_mag_vae", True), _CACHED),
    "cache_compression_vae": Rule(_is("cache_mag_vae", True), _CACHED),
    "use_tiling": Rule(_no_tiling, "must be false: the original's tiled encode differs from diffusers' tiling"),
    "use_tiling_encoder": Rule(_no_tiling, "must be false: the original's tiled encode differs from diffusers'"),
    "use_tiling_decoder": Rule(_no_tiling, "must be false: the original's tiled decode differs from diffusers'"),
    "tile_sample_min_size": Rule(_no_tiling, "only used with tiling"),
    "tile_overlap_factor": Rule(_no_tiling, "only used with tiling"),
    "upcast_vae": Rule(_is("upcast_vae", False), "must be false: the VAE runs in the training weight dtype"),
    "force_upcast": Rule(lambda c: True, "a hint for inference pipelines; no effect on the model"),
    "ch": Rule(lambda c: c.get("block_out_channels") is not None, "only used when block_out_channels is null"),
    "ch_mult": Rule(lambda c: c.get("block_out_channels") is not None, "only used when block_out_channels is null"),
    "use_gc_blocks": Rule(lambda c: not any(c.get("use_gc_blocks") or []),
                          "must be null or all false: diffusers' blocks have no global-context block"),
    "mid_block_type": Rule(_is("mid_block_type", "MidBlock3D"), "must be MidBlock3D"),
    "mid_block_use_attention": Rule(_no_mid_attention, "must be false when layers_per_block > 1: diffusers' mid "
                                    "block has no attention (with one layer the original builds none either)"),
    "mid_block_attention_type": Rule(_no_mid_attention, "only used by mid-block attention"),
    "mid_block_num_attention_heads": Rule(_no_mid_attention, "only used by mid-block attention"),
    "num_attention_heads": Rule(_no_mid_attention, "only used by mid-block attention"),
}


def accepted_keys(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _effective(saved: dict, extra: dict, defaults: dict) -> dict:
    config = {k: v for k, v in saved.items() if not k.startswith("_")}
    return {**defaults, **config, **extra}


def diffusers_kwargs(config: dict, cls, rules: dict[str, Rule], where: str) -> dict:
    """Check every key of an effective config against ``rules``; return the kwargs diffusers' ``cls`` takes.

    Raises ConfigNotHonoured naming the first key that would change the computation or that has no rule.
    """
    accepted = accepted_keys(cls)
    dropped = []
    # Rules in their written order, so a root cause (cache_mag_vae) is named before the keys that depend on it.
    for key in [k for k in rules if k in config] + sorted(k for k in config if k not in rules):
        rule = rules.get(key)
        if rule is not None and not rule.ok(config):
            raise ConfigNotHonoured(f"{where}: config key '{key}' = {config[key]!r} cannot be honoured by "
                                    f"diffusers' {cls.__name__}: {rule.why}.")
        if key not in accepted:
            if rule is None:
                raise ConfigNotHonoured(f"{where}: config key '{key}' = {config[key]!r} is unknown to diffusers' "
                                        f"{cls.__name__} and to EasyAnimate's class; remove it or fix its name.")
            dropped.append(f"{key}={config[key]!r}")
    if dropped:
        logger.info("%s: keys of EasyAnimate's class, honoured or without effect here (see original.py): %s",
                    where, ", ".join(dropped))
    return {k: v for k, v in config.items() if k in accepted}


def transformer_kwargs(saved: dict, extra: dict, *, original: bool, where: str) -> dict:
    config = _effective(saved, extra, ORIGINAL_TRANSFORMER_DEFAULTS if original else {})
    return diffusers_kwargs(config, EasyAnimateTransformer3DModel, TRANSFORMER_RULES, where)


def vae_kwargs(saved: dict, extra: dict, *, original: bool, where: str) -> dict:
    config = _effective(saved, extra, ORIGINAL_VAE_DEFAULTS if original else {})
    if original and config.get("block_out_channels") is None and "ch" in config:
        config["block_out_channels"] = [config["ch"] * m for m in config.get("ch_mult", [1, 2, 4, 4])]
    return diffusers_kwargs(config, AutoencoderKLMagvit, VAE_RULES, where)


def original_transformer_config(diffusers_config: dict) -> dict:
    """A config.json EasyAnimate's own class builds the same model from (for ``export --layout original``)."""
    config = {k: v for k, v in diffusers_config.items() if not k.startswith("_") or k == "_class_name"}
    config.setdefault("_class_name", "EasyAnimateTransformer3DModel")
    # Absent keys would take the original's defaults, several of which differ: write every one explicitly.
    for key, default in ORIGINAL_TRANSFORMER_DEFAULTS.items():
        config.setdefault(key, default)
    config["text_embed_dim_t5"] = diffusers_config.get("text_embed_dim_t5")
    config["enable_clip_in_inpaint"] = False
    config["add_ref_latent_in_control_model"] = config["in_channels"] == 3 * config["out_channels"]
    return config


def original_vae_config(diffusers_config: dict) -> dict:
    """A VAE config.json EasyAnimate's own class reads as the same model diffusers' class computes."""
    config = {k: v for k, v in diffusers_config.items() if not k.startswith("_") or k == "_class_name"}
    config.setdefault("_class_name", "AutoencoderKLMagvit")
    config.update(cache_mag_vae=True, mini_batch_encoder=4, mini_batch_decoder=1, slice_mag_vae=False,
                  slice_compression_vae=False, cache_compression_vae=False, use_tiling=False,
                  use_tiling_encoder=False, use_tiling_decoder=False, upcast_vae=False,
                  mid_block_type="MidBlock3D", mid_block_use_attention=False)
    return config


def _write(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
              folder / "diffusion_pytorch_model.safetensors")
    return folder


def save_transformer_original(transformer: EasyAnimateTransformer3DModel, folder: str | Path,
                              state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``transformer`` (or ``state_dict`` with its config) as EasyAnimate's own class saves it."""
    state = transformer.state_dict() if state_dict is None else state_dict
    return write_transformer_original(dict(transformer.config), state, folder)


def write_transformer_original(diffusers_config: dict, state: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """A diffusers transformer's config and weights, written as EasyAnimate's own class saves them."""
    return _write(Path(folder), original_transformer_config(diffusers_config), to_original_layout(state))


def save_vae_original(vae: AutoencoderKLMagvit, folder: str | Path) -> Path:
    return _write(Path(folder), original_vae_config(dict(vae.config)), vae.state_dict())
