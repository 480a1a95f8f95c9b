"""Activation memory of the real models at real shapes, counted on the CPU without allocating it.

The transformer (and the VAE) are built and run under torch's ``FakeTensorMode``: every tensor has its real shape
and dtype but no storage. ``LiveBytes`` watches every storage an operator creates and when it is freed, so the
peak of live bytes during a forward + backward is what the allocator would have to hold for activations and
temporaries. At 12B widths a full 48-block model takes minutes even without storage, so a few real-width blocks
are run and the count is extrapolated: activations grow by the same amount per block of a kind (saved tensors
without gradient checkpointing, the block inputs with it), which ``tests/test_memory.py`` checks against a full
count on a small model. Parameter gradients are left out here (``sizing`` counts them per layout: DeepSpeed
buckets or DDP's full gradients). Attention runs the fused SDPA path (no S x S matrix), as on the GPU.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Records every storage created by an operator (bytes, when) and when it dies; ``peak`` replays the log."""

    def __init__(self):
        super().__init__()
        self._ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.events: list[tuple[int, int]] = []   # (storage id, +bytes on creation / -bytes on release)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor.untyped_storage())
        return out

    def _track(self, storage) -> None:
        if storage in self._ids:
            return
        sid, size = len(self.events), storage.nbytes()
        self._ids[storage] = sid
        self.events.append((sid, size))
        weakref.finalize(storage, self.events.append, (sid, -size))

    def ignore(self, tensors) -> None:
        """Storages that exist before the run (parameters, buffers): their views must not count as new."""
        for tensor in tensors:
            self._ids.setdefault(tensor.untyped_storage(), -1)

    def storage_id(self, tensor: torch.Tensor) -> int | None:
        return self._ids.get(tensor.untyped_storage())

    def peak(self, exclude: set[int] = frozenset()) -> int:
        live = top = 0
        for sid, delta in self.events:
            if sid not in exclude:
                live += delta
                top = max(top, live)
        return top


@dataclass(frozen=True)
class TransformerBatch:
    """One training batch as the transformer sees it: latents (B, C, T, h, w) and the text length."""

    batch: int
    latent_frames: int
    latent_height: int
    latent_width: int
    text_tokens: int


def _fake_transformer(kwargs: dict, dtype: torch.dtype):
    from diffusers import EasyAnimateTransformer3DModel
    with default_dtype(dtype):   # .to(dtype) cannot swap fake parameters
        return EasyAnimateTransformer3DModel(**kwargs)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def transformer_peak(kwargs: dict, batch: TransformerBatch, *, dtype: torch.dtype = torch.bfloat16,
                     autocast: bool = False, checkpointing: bool = False, train: bool = True,
                     cfg_batch: int = 1) -> int:
    """Peak bytes of activations and temporaries of one forward (+ backward when ``train``) of the transformer
    built from ``kwargs``, weights in ``dtype`` (``autocast``: fp32 weights under bf16 autocast, as accelerate
    runs DDP). Inputs are counted; parameters and parameter gradients are not. ``cfg_batch`` multiplies the batch
    (classifier-free guidance in validation doubles it)."""
    latent = kwargs.get("out_channels") or kwargs["in_channels"]
    control = kwargs["in_channels"] - latent
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = _fake_transformer(kwargs, dtype)
        model.train(train)
        if checkpointing:
            model.enable_gradient_checkpointing()
        tracker = LiveBytes()
        tracker.ignore([*model.parameters(), *model.buffers()])
        act_dtype = torch.bfloat16 if autocast else dtype
        b = batch.batch * cfg_batch
        with tracker, torch.set_grad_enabled(train), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            shape = (b, latent, batch.latent_frames, batch.latent_height, batch.latent_width)
            noisy = torch.empty(shape, dtype=act_dtype)
            controls = torch.empty((b, control, *shape[2:]), dtype=act_dtype) if control else None
            text = torch.empty((b, batch.text_tokens, kwargs["text_embed_dim"]), dtype=act_dtype)
            text_t5 = None
            if kwargs.get("text_embed_dim_t5"):
                text_t5 = torch.empty((b, batch.text_tokens, kwargs["text_embed_dim_t5"]), dtype=act_dtype)
            pred = model(noisy, torch.empty((b,), dtype=torch.float32), encoder_hidden_states=text,
                         encoder_hidden_states_t5=text_t5, control_latents=controls, return_dict=False)[0]
            if train:
                loss = (pred.float() - noisy.float()).pow(2).mean()
                loss.backward()
        grads = {tracker.storage_id(p.grad) for p in model.parameters() if p.grad is not None}
        return tracker.peak(exclude=grads - {None})


@dataclass(frozen=True)
class LayerModel:
    """Activation bytes = base + per_mmdit x MMDiT blocks + per_plain x plain blocks."""

    base: int
    per_mmdit: int
    per_plain: int

    def total(self, mmdit_blocks: int, plain_blocks: int) -> int:
        return self.base + self.per_mmdit * mmdit_blocks + self.per_plain * plain_blocks


def layer_model(kwargs: dict, batch: TransformerBatch, **options) -> LayerModel:
    """Per-block extrapolation from runs with 1 and 2 real-width blocks (and 1-2 plain blocks after an MMDiT one
    when the model has any: blocks from ``mmdit_layers`` on have no separate text feed-forward)."""
    def run(layers: int, mmdit: int) -> int:
        return transformer_peak({**kwargs, "num_layers": layers, "mmdit_layers": mmdit}, batch, **options)

    one, two = run(1, 1), run(2, 2)
    per_mmdit = two - one
    if kwargs.get("mmdit_layers", kwargs["num_layers"]) >= kwargs["num_layers"]:
        return LayerModel(base=one - per_mmdit, per_mmdit=per_mmdit, per_plain=0)
    # Plain blocks come last, as in the model: measure them there (the backward starts with them).
    mixed = run(2, 1)
    per_plain = run(3, 1) - mixed
    return LayerModel(base=mixed - per_mmdit - per_plain, per_mmdit=per_mmdit, per_plain=per_plain)


def block_counts(kwargs: dict) -> tuple[int, int]:
    layers = kwargs["num_layers"]
    mmdit = min(layers, kwargs.get("mmdit_layers", layers))
    return mmdit, layers - mmdit


def transformer_activations(kwargs: dict, batch: TransformerBatch, **options) -> int:
    """Extrapolated peak activation bytes of the whole transformer."""
    return layer_model(kwargs, batch, **options).total(*block_counts(kwargs))


def vae_peak(kwargs: dict, pixels: tuple[int, int, int, int], *, dtype: torch.dtype = torch.bfloat16,
             decode: bool = False) -> int:
    """Peak bytes of one no-grad VAE encode of (batch, frames, height, width) pixels, or the decode of its
    latents (validation)."""
    from diffusers import AutoencoderKLMagvit

    batch, frames, height, width = pixels
    with FakeTensorMode(allow_non_fake_inputs=True):
        with default_dtype(dtype):
            vae = AutoencoderKLMagvit(**kwargs).eval()
        tracker = LiveBytes()
        tracker.ignore([*vae.parameters(), *vae.buffers()])
        with tracker, torch.no_grad():
            if decode:
                latent_frames = (frames - 1) // 4 + 1
                scale = 2 ** (len(kwargs.get("block_out_channels", [0] * 4)) - 1)
                latents = torch.empty((batch, kwargs.get("latent_channels", 16), latent_frames,
                                       height // scale, width // scale), dtype=dtype)
                vae.decode(latents)
            else:
                vae.encode(torch.empty((batch, 3, frames, height, width), dtype=dtype)).latent_dist.sample()
        return tracker.peak()
