"""--trainable_modules selects what it selected in EasyAnimate's trainer: patterns are substrings of the original
parameter names (checked on the fixture EasyAnimate's own class saved)."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from easyanimate.config import ConfigError
from easyanimate.models import load_model_spec, load_transformer
from easyanimate.training.optim import select_trainable

from model_helpers import FIXTURES, YAML, train_config

ORIGINAL_WEIGHTS = FIXTURES / "v5.1" / "transformer" / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def transformer():
    return load_transformer(FIXTURES / "v5.1", load_model_spec(YAML["v5.1"]), layout="original")


@pytest.mark.parametrize("pattern,count", [("attn1", 24), ("attn2", 24), ("to_q", 8), ("to_out", 8), ("norm", 38)])
def test_patterns_select_what_they_selected_in_the_original(transformer, tmp_path, pattern, count):
    original_names = list(load_file(ORIGINAL_WEIGHTS))  # the names EasyAnimate's class saved
    assert sum(pattern in name for name in original_names) == count
    full, low = select_trainable(transformer, train_config(tmp_path, "v5.1", "--trainable_modules", pattern))
    assert len(full) == count and low == []
    assert sum(p.requires_grad for p in transformer.parameters()) == count


def test_a_diffusers_only_name_still_selects_and_low_lr_excludes_full(transformer, tmp_path, caplog):
    caplog.set_level("INFO")
    cfg = train_config(tmp_path, "v5.1", "--trainable_modules", "add_q_proj",
                       "--trainable_modules_low_learning_rate", "attn2")
    full, low = select_trainable(transformer, cfg)
    assert len(full) == 4  # attn1.add_q_proj weight and bias in 2 blocks (attn2.to_q in the original)
    assert len(low) == 20
    assert "'add_q_proj': 4 tensors (matched against diffusers' names)" in caplog.text
    assert "'attn2': 24 tensors (matched against EasyAnimate's names)" in caplog.text


def test_a_pattern_matching_nothing_stops_the_run(transformer, tmp_path):
    with pytest.raises(ConfigError, match="--trainable_modules"):
        select_trainable(transformer, train_config(tmp_path, "v5.1", "--trainable_modules", "lora_up"))
