"""Models built on the meta device from their configs: every tensor's shape, no weight read, no memory taken."""

from __future__ import annotations

import torch


def meta_module(cls, kwargs: dict) -> torch.nn.Module:
    """``cls`` built from its config with every tensor on the meta device."""
    import accelerate

    with accelerate.init_empty_weights(include_buffers=True):
        return cls.from_config(kwargs)


def meta_transformer(kwargs: dict) -> torch.nn.Module:
    from diffusers import EasyAnimateTransformer3DModel
    return meta_module(EasyAnimateTransformer3DModel, kwargs)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
