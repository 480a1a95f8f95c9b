"""The training DataLoader end to end on the generated demo data: the batch dict of the contract."""

from __future__ import annotations

import json

import pytest
import torch

from easyanimate.data import build_train_dataloader


def _epoch(train, epoch=0):
    train.sampler.set_epoch(epoch)
    return list(train.loader)


def test_batches_follow_the_contract_with_the_tiny_training_flags(tiny_cfg):
    train = build_train_dataloader(tiny_cfg(), rank=0, world_size=1)
    batches = _epoch(train)
    assert len(batches) == len(train.sampler) > 0
    kinds = {b["data_type"] for b in batches}
    assert kinds == {"video", "image"}
    for b in batches:
        pixels, control, ref = b["pixel_values"], b["control_pixel_values"], b["ref_pixel_values"]
        B, F, C, H, W = pixels.shape
        assert pixels.dtype == control.dtype == ref.dtype == torch.float32
        assert control.shape == pixels.shape and ref.shape == (B, 1, C, H, W) and C == 3
        assert H % 16 == 0 and W % 16 == 0
        assert (F - 1) % 4 == 0 and (F == 1) == (b["data_type"] == "image")
        assert pixels.min() >= -1 and pixels.max() <= 1
        assert torch.equal(ref[:, 0], pixels[:, 0])  # control_ref_image=first_frame
        assert b["sample_ids"].dtype == torch.long and B % len(b["sample_ids"]) == 0
        assert len(b["text"]) == B
    assert max(b["pixel_values"].shape[1] for b in batches) == 9


def test_image_and_video_samples_never_share_a_batch(tiny_cfg, demo_data):
    entries = json.loads((demo_data / "metadata_control.json").read_text())
    train = build_train_dataloader(tiny_cfg(), rank=0, world_size=1)
    for b in _epoch(train):
        assert {entries[i]["type"] for i in b["sample_ids"].tolist()} == {b["data_type"]}


def test_small_batches_are_tiled_up_to_the_token_budget(tiny_cfg):
    train = build_train_dataloader(tiny_cfg(), rank=0, world_size=1)
    budget = 9 * 32 * 32
    for b in _epoch(train):
        untiled = len(b["sample_ids"])
        _, F, _, H, W = b["pixel_values"].shape
        expected = 4 if F * H * W <= budget // 16 else 2 if F * H * W <= budget // 4 else 1
        assert b["pixel_values"].shape[0] == expected * untiled
        assert b["text"] == b["text"][:untiled] * expected


def test_workers_produce_the_same_batches_as_the_main_process(tiny_cfg):
    single = _epoch(build_train_dataloader(tiny_cfg(), rank=0, world_size=1), epoch=1)
    workers = _epoch(build_train_dataloader(tiny_cfg("--dataloader_num_workers=2"), rank=0, world_size=1), epoch=1)
    assert len(single) == len(workers)
    for a, b in zip(single, workers):
        assert torch.equal(a["sample_ids"], b["sample_ids"]) and a["text"] == b["text"]
        assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_text_dropout_is_deterministic_and_near_its_ratio(tiny_cfg):
    cfg = tiny_cfg("--text_drop_ratio=0.5")
    texts = [b["text"] for e in range(3) for b in _epoch(build_train_dataloader(cfg, rank=0, world_size=1), e)]
    again = [b["text"] for e in range(3) for b in _epoch(build_train_dataloader(cfg, rank=0, world_size=1), e)]
    assert texts == again
    flat = [t for batch in texts for t in batch]
    assert 0 < flat.count("") < len(flat)


def test_video_repeat_zero_leaves_only_images(tiny_cfg):
    train = build_train_dataloader(tiny_cfg("--video_repeat=0"), rank=0, world_size=1)
    assert {b["data_type"] for b in _epoch(train)} == {"image"}


@pytest.mark.parametrize("flag", ["--enable_bucket=false", "--random_hw_adapt=false"])
def test_fixed_sizes_without_bucketing_or_adaptation(tiny_cfg, flag):
    train = build_train_dataloader(tiny_cfg(flag, "--training_with_video_token_length=false"), rank=0, world_size=1)
    for b in _epoch(train):
        H, W = b["pixel_values"].shape[-2:]
        if flag == "--enable_bucket=false":
            assert H == W
        else:
            assert H * W <= (64 if b["data_type"] == "image" else 32) ** 2


def test_two_ranks_see_disjoint_samples_and_together_the_whole_epoch(tiny_cfg):
    per_rank = [{i for b in _epoch(build_train_dataloader(tiny_cfg(), rank=r, world_size=2)) for i in
                 b["sample_ids"].tolist()} for r in range(2)]
    assert not per_rank[0] & per_rank[1]
    assert len(per_rank[0] | per_rank[1]) >= 8  # of 10: at most one odd batch is dropped


def test_resumed_loader_with_prefetching_workers_continues_with_the_same_batches(tiny_cfg):
    cfg = tiny_cfg("--dataloader_num_workers=2")
    reference = _epoch(build_train_dataloader(cfg, rank=0, world_size=1), epoch=2)
    first = build_train_dataloader(cfg, rank=0, world_size=1)
    first.sampler.set_epoch(2)
    batches = iter(first.loader)
    next(batches), next(batches)  # the workers have prefetched further than this
    state = first.sampler.state_dict(batches_consumed=2)
    resumed = build_train_dataloader(cfg, rank=0, world_size=1)
    resumed.sampler.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    rest = list(resumed.loader)
    assert [b["sample_ids"].tolist() for b in rest] == [b["sample_ids"].tolist() for b in reference[2:]]
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(rest, reference[2:]))
