"""The bucketed batch sampler: deterministic, disjoint across ranks, exactly resumable."""

from __future__ import annotations


import pytest

from easyanimate.data.buckets import SizeRules
from easyanimate.data.sampler import BucketBatchSampler, Item

RULES = SizeRules(image_sample_size=64, video_sample_size=32, token_sample_size=32, video_sample_n_frames=9,
                  random_hw_adapt=True, training_with_video_token_length=True)


def items(per_group: int = 12) -> list[Item]:
    """Four (type, bucket) groups of per_group samples, interleaved."""
    groups = [("video", 8), ("video", 4), ("image", 8), ("image", 12)]
    return [Item(i, *groups[i % 4], 64.0) for i in range(4 * per_group)]


def sampler(rank=0, world=1, seed=1, batch=3, data=None) -> BucketBatchSampler:
    return BucketBatchSampler(data or items(), batch, RULES, seed=seed, rank=rank, world_size=world)


def batches(s: BucketBatchSampler, epoch: int = 0) -> list[list]:
    s.set_epoch(epoch)
    return [[(r.position, r.shape) for r in b] for b in s]


def test_same_seed_and_epoch_give_the_same_batches_and_shapes():
    assert batches(sampler()) == batches(sampler())
    assert batches(sampler(), 1) != batches(sampler(), 0)
    assert batches(sampler(seed=2)) != batches(sampler())


def test_every_batch_holds_one_type_and_one_bucket():
    data = items()
    for b in sampler(data=data):
        assert len({(data[r.position].data_type, data[r.position].bucket) for r in b}) == 1
        assert len({r.shape for r in b}) == 1


def test_ranks_get_disjoint_batches_of_equal_count_covering_the_epoch():
    world = 4
    per_rank = [[r.position for b in batches_ for r in b] for batches_ in
                ([list(sampler(rank, world)) for rank in range(world)])]
    counts = {len(sampler(rank, world)) for rank in range(world)}
    assert counts == {4}  # 16 batches of 3 over 4 ranks
    flat = [p for positions in per_rank for p in positions]
    assert len(flat) == len(set(flat)) == 48


def test_partial_buckets_are_filled_within_the_epoch_not_carried_over():
    data = items(per_group=4)  # 4 per group, batch 3: one full and one partial batch per group
    s = sampler(data=data)
    for epoch in range(3):
        s.set_epoch(epoch)
        assert {r.position for b in s for r in b} == set(range(len(data)))
        assert len(s) == 8


def test_len_is_exact_and_ranks_drop_the_same_uneven_tail():
    data = items(per_group=5)  # 2 batches per group -> 8 batches; 3 ranks get 2 each
    lengths = [len(list(sampler(rank, 3, data=data))) for rank in range(3)]
    assert lengths == [len(sampler(0, 3, data=data))] * 3 == [2, 2, 2]


def test_resume_from_state_dict_continues_exactly_mid_epoch():
    original = sampler(rank=1, world=2)
    original.set_epoch(3)
    full = [[(r.position, r.shape, r.batch) for r in b] for b in original]
    state = original.state_dict(batches_consumed=2)
    resumed = sampler(rank=1, world=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the training loop re-announces the saved epoch; the cursor survives
    assert [[(r.position, r.shape, r.batch) for r in b] for b in resumed] == full[2:]
    resumed.set_epoch(4)
    assert len(list(resumed)) == len(resumed)


def test_resume_refuses_a_different_seed_or_dataset():
    state = sampler().state_dict(1)
    with pytest.raises(ValueError, match="seed"):
        sampler(seed=9).load_state_dict(state)
    with pytest.raises(ValueError, match="num_items"):
        sampler(data=items(per_group=6)).load_state_dict(state)


def trained(samplers) -> list[int]:
    """Global batch numbers the ranks' samplers yield, in global order."""
    return sorted(r[0].batch for s in samplers for r in s)


@pytest.mark.parametrize("before, after", [(2, 3), (3, 1), (2, 4)])
def test_resume_on_another_world_size_trains_the_rest_of_the_epoch_once(before, after):
    data = items(per_group=7)  # 12 global batches
    total = len(sampler(data=data).global_batches(3))
    old = [sampler(rank, before, data=data) for rank in range(before)]
    for s in old:
        s.set_epoch(3)
    state = old[0].state_dict(batches_consumed=1)
    new = [sampler(rank, after, data=data) for rank in range(after)]
    for s in new:
        s.load_state_dict(state)
        s.set_epoch(3)  # the loop re-announces the epoch; the cursor survives
    assert {len(s) for s in new} == {(total - before) // after} and new[0].start == 0
    rest = trained(new)
    # Nothing before the cursor again, nothing after it skipped except the tail the new world cannot divide.
    assert rest == list(range(before, before + len(rest)))
    assert total - before - len(rest) < after
    # Each batch holds the same samples as on any other world size.
    one = sampler(data=data)
    one.set_epoch(3)
    contents = {b[0].batch: [q.position for q in b] for b in one}
    assert all([q.position for q in b] == contents[b[0].batch] for s in new for b in s)
    # Later epochs are the new world size's own epochs.
    for s in new:
        s.set_epoch(4)
    fresh = [sampler(rank, after, data=data) for rank in range(after)]
    for s in fresh:
        s.set_epoch(4)
    assert [list(s) for s in new] == [list(s) for s in fresh]


def test_a_second_resume_on_the_new_world_size_continues_its_dealing_exactly():
    data = items(per_group=7)
    first = sampler(0, 2, data=data)
    first.set_epoch(1)
    moved = [sampler(rank, 3, data=data) for rank in range(3)]
    for s in moved:
        s.load_state_dict(first.state_dict(batches_consumed=1))
    whole = [list(s) for s in moved]
    again = [sampler(rank, 3, data=data) for rank in range(3)]
    for s, m in zip(again, moved):
        s.load_state_dict(m.state_dict(batches_consumed=1))
        s.set_epoch(1)
    assert [list(s) for s in again] == [w[1:] for w in whole]


def test_too_little_data_for_the_world_size_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="fewer than one batch"):
        sampler(world=64, batch=4, data=items(per_group=2))
