"""Which layout a model folder is in: diffusers' or EasyAnimate's original one.

Both have transformer/, vae/, scheduler/, tokenizer(s)/ and text_encoder(s)/; the transformer and VAE configs
look alike (same ``_class_name``), and an original-layout repository on the Hub may carry a model_index.json too.
The evidence is the transformer's tensor names: the text stream's attention is ``attn2.*`` in EasyAnimate's class
and ``attn1.add_*_proj`` / ``attn1.to_add_out`` in diffusers'. model_index.json decides only when the names say
nothing (a transformer without text attention).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from easyanimate.models.weights import tensor_names

Layout = Literal["diffusers", "original"]


class ModelFolderError(FileNotFoundError):
    """The model folder is missing something every layout needs; the message names the folder and the fix."""


def detect_layout(folder: str | Path, *, require_weights: bool = True) -> Layout:
    """``require_weights=False`` for folders of configs only (sizing a model without its weights): then
    model_index.json alone decides."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder does not exist.")
    for sub in ("transformer", "vae"):
        if not (folder / sub / "config.json").is_file():
            raise ModelFolderError(f"{folder}: no {sub}/config.json; pass the model root (the folder holding "
                                   "transformer/, vae/, text_encoder/, tokenizer/, scheduler/).")
    weights = [p for p in (folder / "transformer").iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights and not require_weights:
        return "diffusers" if (folder / "model_index.json").is_file() else "original"
    if not weights:
        raise ModelFolderError(f"{folder}/transformer holds no weights (*.safetensors or *.bin).")
    return layout_from_names(tensor_names(folder / "transformer")) or \
        ("diffusers" if (folder / "model_index.json").is_file() else "original")


_ORIGINAL_TEXT_ATTENTION = re.compile(r"^transformer_blocks\.\d+\.attn2\.")
_DIFFUSERS_TEXT_ATTENTION = re.compile(r"^transformer_blocks\.\d+\.attn1\.(add_[qkv]_proj|to_add_out|norm_added_)")


def layout_from_names(names: list[str]) -> Layout | None:
    """The layout the transformer's tensor names are in, or None if they do not tell."""
    if any(_ORIGINAL_TEXT_ATTENTION.match(n) for n in names):
        return "original"
    if any(_DIFFUSERS_TEXT_ATTENTION.match(n) for n in names):
        return "diffusers"
    return None
