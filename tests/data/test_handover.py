"""Reused shared-memory blocks between DataLoader workers and the training process: reused once dropped, never
while the training process still holds any part of the batch."""

from __future__ import annotations

import types

import torch

from easyanimate.data import build_train_dataloader, handover
from easyanimate.data.handover import SharedBlocks


def _as_worker(monkeypatch, worker_id: int = 0) -> None:
    monkeypatch.setattr(handover, "get_worker_info", lambda: types.SimpleNamespace(id=worker_id))


def _pair(per_worker: int) -> tuple[SharedBlocks, SharedBlocks]:
    """The training process's SharedBlocks and a worker's copy of it (as a started worker gets it)."""
    training = SharedBlocks(workers=1, per_worker=per_worker)
    worker = SharedBlocks.__new__(SharedBlocks)
    worker.__setstate__(training.__getstate__())
    return training, worker


def _hand_over(training: SharedBlocks, worker: SharedBlocks, nbytes: int) -> tuple[int, torch.Tensor]:
    """One batch: the worker fills a block, the training process gets its own mapping of it (here a copy).
    Returns the block's address in the worker and the training process's tensor."""
    block, key = worker.take(nbytes)
    received = torch.empty(0, dtype=torch.uint8).set_(block.clone(), 0, (nbytes,))
    training.received(key, received.untyped_storage())
    return block.data_ptr(), received


def test_a_dropped_batch_block_is_reused_and_a_held_one_is_not(monkeypatch):
    _as_worker(monkeypatch)
    training, worker = _pair(per_worker=3)
    held_block, held = _hand_over(training, worker, 1000)
    dropped_block, dropped = _hand_over(training, worker, 1000)
    del dropped
    third_block, third = _hand_over(training, worker, 800)
    assert third_block not in (held_block, dropped_block)  # freed only at the next arrival, as in the loader
    view = held[10:20]  # any view keeps the whole batch held
    del held
    fourth_block, _ = _hand_over(training, worker, 1000)
    assert fourth_block == dropped_block
    assert training.lent.tolist() == [[1, 1, 1]]
    del view, third
    _hand_over(training, worker, 1000)  # every block lent: a fresh one; this arrival frees the dropped ones
    sixth_block, _ = _hand_over(training, worker, 1000)
    assert sixth_block == held_block


def test_with_every_block_lent_a_worker_takes_a_fresh_shared_block(monkeypatch):
    _as_worker(monkeypatch)
    training, worker = _pair(per_worker=2)
    kept = [_hand_over(training, worker, 100) for _ in range(2)]
    storage, key = worker.take(100)
    assert key is None and storage.is_shared()
    assert storage.data_ptr() not in {block for block, _ in kept}


def test_a_block_is_replaced_by_a_larger_one_for_a_larger_batch(monkeypatch):
    _as_worker(monkeypatch)
    training, worker = _pair(per_worker=1)
    _hand_over(training, worker, 100)
    training.received(None, torch.UntypedStorage(1))  # the next arrival: the first batch was dropped
    storage, key = worker.take(5000)
    assert key == (0, 0) and storage.nbytes() >= 5000 and storage.is_shared()


def test_outside_a_worker_blocks_are_plain_memory():
    storage, key = SharedBlocks(workers=0).take(100)
    assert key is None and not storage.is_shared()


def test_kept_batches_stay_intact_while_workers_reuse_the_blocks_of_dropped_ones(tiny_cfg):
    cfg = tiny_cfg("--dataloader_num_workers=1")
    reference = build_train_dataloader(tiny_cfg(), rank=0, world_size=1, float_pixels=False)
    reference.sampler.set_epoch(1)
    expected = list(reference.loader)
    train = build_train_dataloader(cfg, rank=0, world_size=1, float_pixels=False)
    kept = []
    for epoch in (0, 1):  # epoch 0 leaves blocks behind that epoch 1 reuses
        train.sampler.set_epoch(epoch)
        for i, batch in enumerate(train.loader):
            if epoch == 1 and i % 2 == 0:
                kept.append((i, batch))
    assert len(kept) >= 3
    for i, batch in kept:
        for key in ("pixel_values", "control_pixel_values", "ref_pixel_values"):
            assert torch.equal(batch[key], expected[i][key])
    assert train.loader.blocks.lent.sum() <= handover.BLOCKS_PER_WORKER
