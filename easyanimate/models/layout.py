"""Which layout a model folder is in: diffusers' (with model_index.json) or EasyAnimate's original one.

Both have transformer/, vae/, scheduler/, tokenizer(s)/ and text_encoder(s)/; the transformer and VAE folders
look alike (same ``_class_name``), so the one reliable mark is diffusers' model_index.json at the root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Layout = Literal["diffusers", "original"]


class ModelFolderError(FileNotFoundError):
    """The model folder is missing something every layout needs; the message names the folder and the fix."""


def detect_layout(folder: str | Path) -> Layout:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder does not exist.")
    for sub in ("transformer", "vae"):
        if not (folder / sub / "config.json").is_file():
            raise ModelFolderError(f"{folder}: no {sub}/config.json; pass the model root (the folder holding "
                                   "transformer/, vae/, text_encoder/, tokenizer/, scheduler/).")
    return "diffusers" if (folder / "model_index.json").is_file() else "original"
