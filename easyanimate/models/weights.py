"""Reading weight files and loading them strictly: every tensor consumed, every parameter filled, shapes equal.

diffusers' ``from_pretrained`` only logs a warning when a checkpoint and a model disagree and leaves the rest
randomly initialised. Here any disagreement raises ``StrictLoadError`` listing the keys and naming the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import accelerate
import torch
from safetensors.torch import load_file


class StrictLoadError(RuntimeError):
    """Weights and model disagree; the message lists the offending keys and names the folder."""


def _weight_files(folder: Path) -> list[Path]:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    for index in sorted(folder.glob("*.safetensors.index.json")):
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise StrictLoadError(f"{folder}: no weights (*.safetensors or *.bin).")
    return files


def tensor_names(folder: Path) -> list[str]:
    """Names of the tensors in a model subfolder, read from the safetensors headers (no tensor is loaded)."""
    from safetensors import safe_open
    names = []
    for path in _weight_files(folder):
        if path.suffix != ".safetensors":
            return list(read_state_dict(folder))
        with safe_open(path, "pt") as handle:
            names += list(handle.keys())
    return names


def read_state_dict(source: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model subfolder (single file, index-sharded or plain-sharded), or of one weight file."""
    files = [source] if source.is_file() else _weight_files(source)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        part = load_file(path) if path.suffix == ".safetensors" else \
            torch.load(path, map_location="cpu", weights_only=True)
        duplicated = set(part) & set(state)
        if duplicated:
            raise StrictLoadError(f"{path}: tensors also stored in another file: {sorted(duplicated)[:10]}")
        state.update(part)
    return state


def _listing(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing from the files ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"in the files but not in the model ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape differs, file vs model ({len(mismatched)}): {_listing(mismatched)}")
    if problems:
        raise StrictLoadError(f"{where}: weights do not match {type(model).__name__}; refusing a partial load. "
                              + "; ".join(problems))


def build_strict(cls, kwargs: dict, state: dict[str, torch.Tensor], *, dtype: torch.dtype, where: str):
    """Instantiate ``cls(**kwargs)`` without random init and fill it from ``state``, strictly."""
    with accelerate.init_empty_weights():
        model = cls.from_config(kwargs)
    check_keys(model, state, where)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise StrictLoadError(f"{where}: tensors left uninitialised: {_listing(meta)}")
    return model


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strictly overwrite an already-built model's weights (e.g. ``--transformer_path``)."""
    check_keys(model, state, where)
    model.load_state_dict(state, strict=True)


def stored_dtype(folder: Path) -> torch.dtype:
    """The floating dtype the weights in ``folder`` are stored in (to convert without changing precision)."""
    from safetensors import safe_open
    path = _weight_files(folder)[0]
    if path.suffix != ".safetensors":
        return next(v.dtype for v in read_state_dict(path).values() if v.is_floating_point())
    with safe_open(path, "pt") as handle:
        for key in handle.keys():
            tensor = handle.get_slice(key)
            dtype = getattr(torch, {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(
                tensor.get_dtype(), "float32"))
            if tensor.get_dtype() in ("F32", "F16", "BF16"):
                return dtype
    return torch.float32
