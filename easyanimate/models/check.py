"""A model folder checked as strictly as loading it, without reading a single weight: for the preflight job.

The weight files' headers give every tensor's name and shape; the transformer is built on the meta device from
the folder's effective config (the same rules as ``loading.load_transformer``) and compared name by name and
shape by shape. A 12B folder checks in seconds and needs no memory for the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from easyanimate.models import original
from easyanimate.models.layout import detect_layout
from easyanimate.models.loading import _second_stream_rule
from easyanimate.models.meta import count, meta_transformer
from easyanimate.models.spec import load_model_spec
from easyanimate.models.weights import StrictLoadError, _weight_files, check_keys


def stored_shapes(folder: Path) -> dict[str, torch.Tensor]:
    """Meta tensors shaped as the ones stored in ``folder``'s safetensors files (names and shapes only)."""
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        if path.suffix != ".safetensors":
            raise StrictLoadError(f"{path}: only safetensors headers can be read without loading the weights")
        with safe_open(path, "pt") as handle:
            for key in handle.keys():
                state[key] = torch.empty(handle.get_slice(key).get_shape(), device="meta")
    return state


def check_model_folder(folder: str | Path, config_path: str | Path | None) -> dict:
    """Layout and transformer parameter count of a model folder whose transformer weights match its config;
    raises (``ModelFolderError``, ``StrictLoadError``, ``ConfigNotHonoured``) naming the problem otherwise."""
    layout = detect_layout(folder)
    sub = Path(folder) / "transformer"
    where = f"{sub} ({layout} layout)"
    extra = load_model_spec(config_path).transformer_additional_kwargs if config_path else {}
    kwargs = original.transformer_kwargs(json.loads((sub / "config.json").read_text()), extra,
                                         original=layout == "original", where=where)
    state = stored_shapes(sub)
    if layout == "original":
        state = original.to_diffusers_layout(state)
    if config_path:
        _second_stream_rule(kwargs, state, load_model_spec(config_path), where)
    model = meta_transformer(kwargs)
    check_keys(model, state, where)
    return {"layout": layout, "params": count(model)}
