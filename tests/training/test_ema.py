"""Sharded EMA: the same averages as diffusers' EMAModel, 1/world of its memory per rank, and checkpoints that
resume under another number of ranks and export whole."""

from __future__ import annotations

import pytest
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
    model = _model()
    shards = [ShardedEMA(model.named_parameters(), rank=r, world=3) for r in range(3)]
    for shard in shards[:2]:
        shard.save(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        ShardedEMA(model.named_parameters(), rank=0, world=1).load(tmp_path)


@pytest.mark.integration
def test_zero2_run_saves_one_ema_shard_per_rank_resumes_them_and_exports_the_whole(tiny_model_v51, demo_data,
                                                                                    tmp_path):
    from safetensors.torch import load_file

    from trainer_runs import CONFIGS, launch

    output = tmp_path / "out"
    launch_flags = ["--use_deepspeed", "--deepspeed_config_file", str(CONFIGS / "zero_stage2_config.json"),
                    "--deepspeed_multinode_launcher", "standard"]
    flags = [f"--pretrained_model_name_or_path={tiny_model_v51}", f"--train_data_dir={demo_data}",
             f"--train_data_meta={demo_data / 'metadata_control.json'}",
             f"--config_path={CONFIGS / 'easyanimate_video_v5.1_magvit_qwen.yaml'}", "--image_sample_size=32",
             "--video_sample_size=32", "--token_sample_size=32", "--video_sample_stride=1",
             "--video_sample_n_frames=9", "--train_batch_size=1", "--seed=42", f"--output_dir={output}",
             "--enable_bucket", "--loss_type=flow", "--train_mode=control_ref", "--checkpointing_steps=2",
             "--report_to=none", "--use_deepspeed", "--use_ema", "--dataloader_num_workers=0",
             "--resume_from_checkpoint=latest"]
    first = launch(launch_flags, flags + ["--max_train_steps=2"], processes=2, port=29533)
    assert first.returncode == 0, first.stderr[-5000:]
    shards = sorted(p.name for p in (output / "checkpoint-2" / "ema").iterdir())
    assert shards == ["rank00000.pt", "rank00001.pt"]
    manifest = (output / "checkpoint-2" / "manifest.json").read_text()
    assert "ema/rank00001.pt" in manifest                     # digested and committed with the rest
    second = launch(launch_flags, flags + ["--max_train_steps=4"], processes=2, port=29534)
    assert second.returncode == 0, second.stderr[-5000:]
    assert "resumed from" in second.stderr
    saved = torch.load(output / "checkpoint-4" / "ema" / "rank00000.pt", weights_only=True)
    assert saved["optimization_step"] == 4                    # the resumed average went on counting
    exported = load_file(output / "transformer_ema" / "diffusion_pytorch_model.safetensors")
    whole = full_state_dict(output / "checkpoint-4")
    assert exported.keys() == whole.keys() and all(torch.equal(exported[k], whole[k]) for k in whole)
