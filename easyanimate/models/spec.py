"""Typed view of a model YAML (``--config_path``): which text encoders a model has and the extra model kwargs.

The YAML keys and their meaning are EasyAnimate's (``config/easyanimate_video_v5*.yaml``). V5 and V5.1 differ only
in this data: ``TEXT_ENCODER_LAYOUTS`` maps the two text-encoder switches to the encoders and subfolders to load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

EncoderKind = Literal["qwen2_vl", "bert", "t5"]


class ModelSpecError(ValueError):
    """The model YAML is unreadable or asks for something we cannot build; the message names the key."""


@dataclass(frozen=True)
class EncoderSlot:
    """One text encoder of a model: what it is and where its weights and tokenizer live in the model folder."""

    kind: EncoderKind
    encoder_subfolder: str
    tokenizer_subfolder: str


def _slot(kind: EncoderKind, suffix: str = "") -> EncoderSlot:
    return EncoderSlot(kind, f"text_encoder{suffix}", f"tokenizer{suffix}")


# (enable_multi_text_encoder, replace_t5_to_llm) -> encoders, in the order the transformer takes them:
# the first feeds encoder_hidden_states, the second encoder_hidden_states_t5.
TEXT_ENCODER_LAYOUTS: dict[tuple[bool, bool], tuple[EncoderSlot, ...]] = {
    (False, True): (_slot("qwen2_vl"),),                          # V5.1
    (True, False): (_slot("bert"), _slot("t5", "_2")),             # V5
    (True, True): (_slot("bert"), _slot("qwen2_vl", "_2")),
    (False, False): (_slot("t5"),),                               # V2-V3 style single T5
}


@dataclass(frozen=True)
class ModelSpec:
    enable_multi_text_encoder: bool = False
    replace_t5_to_llm: bool = False
    transformer_additional_kwargs: dict[str, Any] = field(default_factory=dict)
    vae_kwargs: dict[str, Any] = field(default_factory=dict)
    text_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @property
    def enable_text_attention_mask(self) -> bool:
        """The YAML's value; the loaded transformer's effective config is what text encoding follows."""
        return bool(self.transformer_additional_kwargs.get("enable_text_attention_mask", True))

    @property
    def add_ref_latent_in_control_model(self) -> bool:
        return bool(self.transformer_additional_kwargs.get("add_ref_latent_in_control_model", False))

    @property
    def text_encoders(self) -> tuple[EncoderSlot, ...]:
        return TEXT_ENCODER_LAYOUTS[(self.enable_multi_text_encoder, self.replace_t5_to_llm)]

    @property
    def has_second_text_encoder(self) -> bool:
        return len(self.text_encoders) == 2


def _mapping(raw: dict, key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ModelSpecError(f"{path}: '{key}' must be a mapping, got {type(value).__name__}.")
    return dict(value)


def load_model_spec(config_path: str | Path) -> ModelSpec:
    """Read a model YAML into a ModelSpec; unknown top-level sections are an error (a typo would be silent)."""
    path = Path(config_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ModelSpecError(f"--config_path {path}: cannot read the model YAML: {err}") from err
    known = {"transformer_additional_kwargs", "vae_kwargs", "text_encoder_kwargs"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelSpecError(f"--config_path {path}: unknown section(s) {unknown}; expected {sorted(known)}.")
    text = _mapping(raw, "text_encoder_kwargs", path)
    return ModelSpec(
        enable_multi_text_encoder=bool(text.get("enable_multi_text_encoder", False)),
        replace_t5_to_llm=bool(text.get("replace_t5_to_llm", False)),
        transformer_additional_kwargs=_mapping(raw, "transformer_additional_kwargs", path),
        vae_kwargs=_mapping(raw, "vae_kwargs", path),
        text_encoder_kwargs=text,
        source=path,
    )
