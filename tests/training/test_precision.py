"""The transformer trains in the dtype asked and reaches the device in it: never an fp32 copy there first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from easyanimate.config import ConfigError, parse_args
from easyanimate.models import load_components, load_model_spec
from easyanimate.training.build import transformer_dtype

REPO = Path(__file__).resolve().parents[2]
YAML = REPO / "configs" / "easyanimate_video_v5.1_magvit_qwen.yaml"


class DeviceWrites(TorchDispatchMode):
    """(dtype, shape) of every tensor copied to ``device`` from another device, except while ``paused``."""

    def __init__(self, device: str):
        super().__init__()
        self.device, self.seen, self.paused = device, [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if not self.paused and any(t.device.type != self.device for t in inputs):
            self.seen += [(t.dtype, tuple(t.shape)) for t in tree_leaves(out)
                          if isinstance(t, torch.Tensor) and t.device.type == self.device]
        return out


def test_bf16_transformer_is_never_materialised_in_fp32_on_the_target_device(tiny_model_v51_original,
                                                                               monkeypatch):
    # The meta device stands in for the GPU: everything moved there is seen, nothing is allocated. The loader's
    # own meta skeleton (init_empty_weights, filled on the CPU by build_strict) is not a transfer: not recorded.
    import contextlib

    import accelerate

    from easyanimate.models import weights

    empty_weights = accelerate.init_empty_weights

    @contextlib.contextmanager
    def skeleton(*args, **kwargs):
        writes.paused = True
        try:
            with empty_weights(*args, **kwargs):
                yield
        finally:
            writes.paused = False

    monkeypatch.setattr(weights.accelerate, "init_empty_weights", skeleton, raising=True)
    cfg = parse_args(["--pretrained_model_name_or_path", str(tiny_model_v51_original), "--config_path", str(YAML),
                      "--loss_type", "flow"])

    def transfers(dtype: torch.dtype) -> tuple[list, set]:
        nonlocal writes
        writes = DeviceWrites("meta")
        with writes:
            parts = load_components(cfg, load_model_spec(YAML), device="meta", weight_dtype=torch.bfloat16,
                                    transformer_dtype=dtype)
        params = dict(parts.transformer.named_parameters())
        assert all(p.device.type == "meta" and p.dtype == dtype for p in params.values())
        others = [*parts.vae.parameters(), *(p for e in parts.text_encoder.encoders for p in e.model.parameters())]
        shapes = {tuple(p.shape) for p in params.values()} - {tuple(p.shape) for p in others}
        assert len(shapes) >= 5  # enough transformer-only shapes left to see its transfer
        return writes.seen, shapes

    writes = None
    seen, shapes = transfers(torch.bfloat16)
    fp32_there = [shape for dtype, shape in seen if dtype == torch.float32 and shape in shapes]
    assert not fp32_there, f"fp32 tensors of transformer shapes reached the device: {fp32_there[:5]}"
    assert shapes <= {shape for dtype, shape in seen if dtype == torch.bfloat16}
    # The recorder does see fp32 transfers: asking for fp32 training moves fp32 there.
    seen, shapes = transfers(torch.float32)
    assert shapes <= {shape for dtype, shape in seen if dtype == torch.float32}


def _cfg(*flags: str):
    return parse_args(["--seed", "1", *flags])


def test_training_dtype_follows_deepspeed_and_master_weights_flag():
    assert transformer_dtype(_cfg(), deepspeed=True, weight_dtype=torch.bfloat16) == torch.bfloat16
    assert transformer_dtype(_cfg(), deepspeed=False, weight_dtype=torch.bfloat16) == torch.float32
    assert transformer_dtype(_cfg("--master_weights_dtype", "bf16"), deepspeed=False,
                             weight_dtype=torch.bfloat16) == torch.bfloat16
    with pytest.raises(ConfigError, match="--mixed_precision bf16"):
        transformer_dtype(_cfg("--master_weights_dtype", "bf16"), deepspeed=False, weight_dtype=torch.float32)


@pytest.mark.integration
def test_master_weights_bf16_trains_bf16_weights_with_bf16_adam_moments(tiny_model_v51, demo_data, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_training_behaviour import V51, one_sample_meta, train

    loss_type, _, yaml, mode = V51
    result = train(tiny_model_v51, demo_data, one_sample_meta(demo_data, tmp_path), tmp_path / "out", loss_type,
                   yaml, mode, "--mixed_precision=bf16", "--master_weights_dtype=bf16", "--max_train_steps=2",
                   "--checkpointing_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file
    checkpoint = tmp_path / "out" / "checkpoint-2"
    weights = load_file(checkpoint / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    moments = torch.load(checkpoint / "optimizer.bin", weights_only=False)["state"]
    assert moments and all(s["exp_avg"].dtype == torch.bfloat16 == s["exp_avg_sq"].dtype
                           for s in moments.values())
