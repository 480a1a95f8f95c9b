"""The folder a run hands on: the base model with the trained transformer in it, base components linked.

Every component but the transformer (VAE weights, text encoders, tokenizers, scheduler) is a symlink to the base
model's file: a 12B model's other parts are ~16 GB, written once, not per run. Config files are written where the
layout needs them (the VAE's effective config), weights never.

- One text encoder (V5.1): diffusers' layout with ``model_index.json`` naming ``EasyAnimateControlPipeline``;
  ``MendedEasyAnimateControlPipeline.from_pretrained(folder)`` loads it in one call.
- Two text encoders (V5): diffusers has no pipeline that takes them, so the folder is in EasyAnimate's original
  layout (what its predict scripts and our loader read); no ``model_index.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from easyanimate.models import original
from easyanimate.models.layout import ModelFolderError, detect_layout
from easyanimate.models.spec import ModelSpec
from easyanimate.models.weights import read_state_dict

logger = logging.getLogger(__name__)

PIPELINE_CLASS = "EasyAnimateControlPipeline"


def _link_tree(source: Path, target: Path, *, skip: tuple[str, ...] = ()) -> None:
    """Mirror ``source``'s files into ``target`` as absolute symlinks (no bytes copied)."""
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.name not in skip):
        link = target / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.absolute())


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _diffusers_version() -> str:
    import diffusers
    return diffusers.__version__


def _effective_vae_config(base: Path, spec: ModelSpec, is_original: bool) -> dict:
    """The VAE config training used (config.json + the YAML's vae_kwargs, original defaults where absent)."""
    saved = json.loads((base / "vae" / "config.json").read_text())
    return original.vae_kwargs(saved, spec.vae_kwargs, original=is_original, where=str(base / "vae"))


def _text_parts(base: Path, spec: ModelSpec) -> list[str]:
    return [name for slot in spec.text_encoders for name in (slot.encoder_subfolder, slot.tokenizer_subfolder)]


def _transformers_class(folder: Path, kind: str) -> str:
    if kind == "tokenizer":
        config = json.loads((folder / "tokenizer_config.json").read_text())
        return config["tokenizer_class"]
    return json.loads((folder / "config.json").read_text())["architectures"][0]


def _diffusers_folder(out: Path, transformer: Path, base: Path, spec: ModelSpec, is_original: bool,
                      take_transformer: bool) -> None:
    if take_transformer:
        shutil.move(transformer, out / "transformer")
    else:
        _link_tree(transformer, out / "transformer")
    vae_config = _effective_vae_config(base, spec, is_original)
    _link_tree(base / "vae", out / "vae", skip=("config.json",))
    _write_json(out / "vae" / "config.json", {"_class_name": "AutoencoderKLMagvit",
                                               "_diffusers_version": _diffusers_version(), **vae_config})
    index = {"_class_name": PIPELINE_CLASS, "_diffusers_version": _diffusers_version(),
             "transformer": ["diffusers", "EasyAnimateTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLMagvit"]}
    for name in _text_parts(base, spec):
        _link_tree(base / name, out / name)
        index[name] = ["transformers", _transformers_class(base / name, name.split("_")[0])]
    _link_tree(base / "scheduler", out / "scheduler")
    scheduler = json.loads((base / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    index["scheduler"] = ["diffusers", scheduler]
    _write_json(out / "model_index.json", index)


def _original_folder(out: Path, transformer: Path, base: Path, spec: ModelSpec, is_original: bool,
                     take_transformer: bool) -> None:
    config = json.loads((transformer / "config.json").read_text())
    original.write_transformer_original(config, read_state_dict(transformer), out / "transformer")
    if take_transformer:
        shutil.rmtree(transformer)
    if is_original:
        _link_tree(base / "vae", out / "vae")
    else:
        _link_tree(base / "vae", out / "vae", skip=("config.json",))
        _write_json(out / "vae" / "config.json",
                    original.original_vae_config(_effective_vae_config(base, spec, is_original)))
    for name in [*_text_parts(base, spec), "scheduler"]:
        _link_tree(base / name, out / name)


def write_pipeline_folder(out: str | Path, *, transformer: str | Path, base: str | Path, spec: ModelSpec,
                          take_transformer: bool = False) -> Path:
    """``out``: the base model folder ``base`` with the trained diffusers transformer folder ``transformer`` in it
    (replaced whole, or left as it was if writing fails). The transformer's files are linked, or with
    ``take_transformer`` moved in (a temporary export)."""
    out, transformer, base = Path(out), Path(transformer), Path(base)
    is_original = detect_layout(base) == "original"
    needed = [base / name for name in [*_text_parts(base, spec), "scheduler"]]
    missing = [str(p) for p in needed if not p.is_dir()]
    if missing:
        raise ModelFolderError(f"{base}: cannot hand on a model folder without {', '.join(missing)}.")
    temp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    if spec.has_second_text_encoder:
        _original_folder(temp, transformer, base, spec, is_original, take_transformer)
    else:
        _diffusers_folder(temp, transformer, base, spec, is_original, take_transformer)
    if out.exists():
        shutil.rmtree(out)
    os.replace(temp, out)
    logger.info("pipeline folder %s: %s layout, trained transformer from %s, other components linked to %s",
                out, "original" if spec.has_second_text_encoder else "diffusers", transformer, base)
    return out
