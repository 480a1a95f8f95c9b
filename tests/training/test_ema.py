"""Sharded EMA: the same averages as diffusers' EMAModel, 1/world of its memory per rank, and checkpoints that
resume under another number of ranks and export whole."""

from __future__ import annotations

import torch
from diffusers.training_utils import EMAModel

from easyanimate.training.ema import ShardedEMA, full_state_dict


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.GELU(), torch.nn.Linear(13, 5),
                               torch.nn.LayerNorm(5))


def _train_steps(model: torch.nn.Module, emas: list, steps: int) -> None:
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        for ema in emas:
            ema.step(model.parameters())


def _assembled(shards: list[ShardedEMA]) -> torch.Tensor:
    return torch.cat([s.shard for s in sorted(shards, key=lambda s: s.lo)])


def test_sharded_ema_matches_diffusers_ema_on_any_number_of_ranks():
    model = _model()
    reference = EMAModel(model.parameters(), decay=0.9)
    sharded = {world: [ShardedEMA(model.named_parameters(), rank=r, world=world, decay=0.9) for r in range(world)]
               for world in (1, 3, 4)}
    _train_steps(model, [reference, *[s for shards in sharded.values() for s in shards]], steps=25)
    want = torch.cat([p.reshape(-1) for p in reference.shadow_params])
    for world, shards in sharded.items():
        assert sum(s.shard.numel() for s in shards) == want.numel()
        torch.testing.assert_close(_assembled(shards), want, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(want, torch.cat([p.reshape(-1) for p in model.parameters()]))


def test_each_rank_holds_one_world_th_of_an_fp32_copy_even_for_a_bf16_model():
    model = _model().to(torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    shards = [ShardedEMA(model.named_parameters(), rank=r, world=8, decay=0.9) for r in range(8)]
    assert all(s.shard.dtype == torch.float32 for s in shards)
    assert max(s.shard.numel() for s in shards) == -(-total // 8)  # ceil(total / 8) fp32 values at most


def test_checkpoint_of_3_ranks_resumes_on_2_ranks_and_exports_the_whole_average(tmp_path):
    model = _model()
    three = [ShardedEMA(model.named_parameters(), rank=r, world=3, decay=0.9) for r in range(3)]
    _train_steps(model, three, steps=7)
    for shard in three:
        shard.save(tmp_path)
    saved = _assembled(three).clone()
    two = [ShardedEMA(_model(seed=1).named_parameters(), rank=r, world=2, decay=0.9) for r in range(2)]
    for shard in two:
        shard.load(tmp_path)
    assert torch.equal(_assembled(two), saved)
    assert all(s.optimization_step == 7 for s in two)
    _train_steps(model, [*two, *three], steps=3)   # the resumed average goes on exactly as the original
    assert torch.equal(_assembled(two), _assembled(three))
    state = full_state_dict(tmp_path)
    assert list(state) == [name for name, _ in model.named_parameters()]
    assert [t.shape for t in state.values()] == [p.shape for p in model.parameters()]
    assert torch.equal(torch.cat([t.reshape(-1) for t in state.values()]), saved)


def test_a_missing_rank_file_is_an_error_naming_the_folder(tmp_path):
    import pytest
    model = _model()
    shards = [ShardedEMA(model.named_parameters(), rank=r, world=3) for r in range(3)]
    for shard in shards[:2]:
        shard.save(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        ShardedEMA(model.named_parameters(), rank=0, world=1).load(tmp_path)
