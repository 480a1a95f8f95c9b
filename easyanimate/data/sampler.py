"""A deterministic, distributed, bucketed batch sampler with an exact resume cursor.

Per epoch, from the seed alone (the same on every rank): shuffle all samples, group them by (type, aspect
bucket), cut each group into batches (a last partial batch is filled up from the start of its own group, so
nothing carries over into the next epoch) and shuffle the batches. This list of global batches depends on the
seed and the data only, never on the number of ranks. Rank r gets every world_size-th batch starting at r; the
few batches that do not divide evenly among the ranks (the tail) are dropped. Ranks therefore see disjoint
batches, all of the same count. Each batch also gets its shape (h, w, frames) from its own random stream, so any
worker can build it and a resumed run rebuilds the same batches.

Resuming on another number of ranks (elastic resume): the cursor is kept in global terms, ``offset`` global
batches of the epoch already trained. The new ranks deal the rest of the same list from there (rank r gets
batches offset + r, offset + r + world_size, ...) and drop the tail of the rest that does not divide among them,
fewer than world_size batches. Later epochs start at offset 0: they are the epochs a run with the new world size
would have had from the start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence


from .buckets import BatchShape, SizeRules, plan_batch
from .seeding import Stream, rng

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One entry of the epoch's sample list (a video row appears video_repeat times)."""

    index: int          # metadata entry
    data_type: str      # "video" | "image"
    bucket: int         # aspect bucket of the native size
    native_side: float  # sqrt(native h * w)


@dataclass(frozen=True)
class SampleRequest:
    """Everything a worker needs to build one sample of one batch, deterministically."""

    position: int       # place in the sample list
    index: int          # metadata entry
    data_type: str
    epoch: int
    batch: int          # global batch number within the epoch
    slot: int           # place in the batch
    shape: BatchShape


class BucketBatchSampler:
    """Yields lists of SampleRequest; ``len`` is the exact number of batches per epoch on this rank."""

    def __init__(self, items: Sequence[Item], batch_size: int, rules: SizeRules, *, seed: int, rank: int,
                 world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.items, self.batch_size, self.rules = list(items), batch_size, rules
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self._start = 0, 0
        self.offset = 0  # global batches of this epoch trained before this world size took over (elastic resume)
        self._cache: tuple[int, list[list[int]]] | None = None
        if len(self._global_batches(0)) < world_size:
            raise ValueError(f"{len(self.items)} samples make fewer than one batch of {batch_size} per rank on "
                             f"{world_size} ranks; use more data, a smaller --train_batch_size or fewer GPUs.")

    def set_epoch(self, epoch: int) -> None:
        """Start of an epoch; a resume cursor loaded for this same epoch is kept."""
        if epoch != self.epoch:
            self.epoch, self._start, self.offset = epoch, 0, 0

    def __len__(self) -> int:
        """Batches per rank in the current epoch (from ``offset`` on, after an elastic resume)."""
        return (len(self._global_batches(self.epoch)) - self.offset) // self.world_size

    @property
    def start(self) -> int:
        """Batches of the current epoch this rank has already consumed (the resume cursor; 0 at an epoch's start)."""
        return self._start

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches in order, before any tail is dropped (positions in the sample list)."""
        return list(self._global_batches(epoch))

    def _global_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of an epoch, as positions in the sample list (world-size independent)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = rng(self.seed, Stream.SHUFFLE, epoch).permutation(len(self.items))
        groups: dict[tuple[str, int], list[int]] = {}
        for position in order:
            item = self.items[position]
            groups.setdefault((item.data_type, item.bucket), []).append(int(position))
        batches = []
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                batch += [members[i % len(members)] for i in range(self.batch_size - len(batch))]
                batches.append(batch)
        shuffled = rng(self.seed, Stream.BATCH_ORDER, epoch).permutation(len(batches))
        self._cache = (epoch, [batches[i] for i in shuffled])
        return self._cache[1]

    def requests(self, epoch: int, batch: int, positions: list[int]) -> list[SampleRequest]:
        """The requests of global batch ``batch``: its shape drawn from its own stream."""
        members = [self.items[p] for p in positions]
        first = members[0]
        # The ranks of one step share a budget stream, keyed by the step's first global batch.
        offset = self.offset if epoch == self.epoch else 0
        step_first = offset + (batch - offset) // self.world_size * self.world_size
        shape = plan_batch(self.rules, first.data_type, first.bucket, min(m.native_side for m in members),
                           rng(self.seed, Stream.BATCH_SHAPE, epoch, batch),
                           rng(self.seed, Stream.SHARED_BUDGET, epoch, step_first // self.world_size))
        return [SampleRequest(position=p, index=m.index, data_type=m.data_type, epoch=epoch, batch=batch, slot=s,
                              shape=shape) for s, (p, m) in enumerate(zip(positions, members))]

    def __iter__(self) -> Iterator[list[SampleRequest]]:
        epoch, start = self.epoch, self._start
        self._start = 0
        batches = self._global_batches(epoch)
        for step in range(start, len(self)):
            batch = self.offset + step * self.world_size + self.rank
            yield self.requests(epoch, batch, batches[batch])

    def state_dict(self, batches_consumed: int) -> dict:
        """The cursor after ``batches_consumed`` batches of the current epoch reached the training loop
        (``global_batches_consumed`` is the same cursor in world-size independent terms)."""
        return {"epoch": self.epoch, "batches_consumed": int(batches_consumed), "seed": self.seed,
                "world_size": self.world_size, "rank": self.rank, "num_items": len(self.items),
                "batch_size": self.batch_size, "offset": self.offset,
                "global_batches_consumed": self.offset + int(batches_consumed) * self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """The next iteration starts exactly at the saved cursor (same seed, data and batch size required). On
        another world size the epoch continues at the saved global position (see the module docstring)."""
        for key, mine in (("seed", self.seed), ("num_items", len(self.items)), ("batch_size", self.batch_size)):
            if state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]}, this run has {mine}: the data order "
                                 "cannot be resumed exactly; start a new run or restore the old setting.")
        self.epoch, consumed = int(state["epoch"]), int(state["batches_consumed"])
        self.offset = int(state.get("offset", 0))
        if state["world_size"] != self.world_size:
            self.offset += consumed * int(state["world_size"])
            consumed = 0
            total = len(self._global_batches(self.epoch))
            if self.rank == 0:
                logger.info("data order of epoch %d saved on %d ranks continues on %d: %d of its %d global "
                            "batches were trained, the next %d are dealt to the %d ranks and the last %d dropped "
                            "(the tail that does not divide among them)", self.epoch, state["world_size"],
                            self.world_size, self.offset, total, len(self) * self.world_size, self.world_size,
                            total - self.offset - len(self) * self.world_size)
        self._start = min(consumed, len(self))
