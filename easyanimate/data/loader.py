"""``build_train_dataloader``: metadata -> sample list -> bucketed sampler -> DataLoader, for one rank.

Native sizes come from the metadata's width/height when present, otherwise from a threaded probe of every file
once at start-up (not every epoch). Files that cannot be probed are left out and logged; bad samples found
later are replaced in the workers and counted here, and ``TooManyBadSamples`` stops the run once more than
``max_bad_sample_fraction`` of this rank's samples per epoch turned out bad.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from easyanimate.runfolder import ignore_preemption_signals

from .allocator import keep_freed_memory
from .buckets import SizeRules, closest_bucket
from .collate import BLOCK_KEY, Collate, to_float_batch
from .dataset import ControlVideoDataset, LoadOptions, TooManyBadSamples
from .handover import SharedBlocks
from .metadata import Sample, load_metadata
from .sampler import BucketBatchSampler, Item
from .video import MediaError, MediaInfo, probe_many, start_decode_watchdog

logger = logging.getLogger(__name__)

# A clip decodes in well under a second; minutes mean a decoder call that will never return.
DECODE_TIMEOUT_S = 300.0


class TrainLoader(torch.utils.data.DataLoader):
    """A DataLoader that counts the distinct bad samples its batches report and stops past the limit.

    Workers hand over uint8 pixels; the float32 conversion happens here, in the training process, unless
    ``float_pixels`` is off (then convert on the accelerator with ``collate.to_unit_range``: 4x fewer bytes to copy).

    Iterate it directly; wrapping it in ``accelerator.prepare`` would re-shard batches the sampler already
    sharded and drop the bad-sample accounting.
    """

    def __init__(self, *args, max_bad: float, blocks: SharedBlocks, float_pixels: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_bad, self.blocks, self.float_pixels = max_bad, blocks, float_pixels
        self.bad_sample_ids: set[int] = set()

    def __iter__(self) -> Iterator[dict]:
        for batch in super().__iter__():
            self.blocks.received(batch.pop(BLOCK_KEY), batch["pixel_values"].untyped_storage())
            # Sent as lists: a tensor would cost a shared-memory segment of its own per batch (about 1 ms of CPU
            # on each side for 8 bytes; 0.68-0.81 -> 0.86-0.95 of raw decoding for 1024x1024 images, 1 worker).
            batch["sample_ids"] = torch.tensor(batch["sample_ids"], dtype=torch.long)
            batch["bad_sample_ids"] = torch.tensor(batch["bad_sample_ids"], dtype=torch.long)
            self.bad_sample_ids.update(batch["bad_sample_ids"].tolist())
            if len(self.bad_sample_ids) > self.max_bad:
                samples = [self.dataset.samples[i] for i in sorted(self.bad_sample_ids)[:10]]
                listing = "; ".join(f"entry {s.index}: {s.file_path} (control {s.control_file_path})" for s in samples)
                raise TooManyBadSamples(
                    f"{len(self.bad_sample_ids)} distinct samples failed to load on this rank, more than "
                    f"{self.max_bad:.1f} allowed by --max_bad_sample_fraction: {listing}. Run `easyanimate "
                    "check-data` for the full report.")
            yield to_float_batch(batch) if self.float_pixels else batch


@dataclass
class TrainData:
    loader: TrainLoader
    sampler: BucketBatchSampler
    dataset: ControlVideoDataset
    samples: list[Sample]


def native_sizes(samples: Sequence[Sample]) -> list[MediaInfo | MediaError]:
    """(h, w) of each sample: from the metadata, else probed (threads)."""
    missing = [s for s in samples if s.width is None or s.height is None]
    if missing:
        logger.info("probing the size of %d files (`easyanimate check-data --write_meta` adds width/height to the "
                    "metadata and skips this)", len(missing))
    probed = iter(probe_many([(s.file_path, s.data_type) for s in missing]) if missing else [])
    return [next(probed) if s.width is None or s.height is None else MediaInfo(s.height, s.width, 1)
            for s in samples]


def sample_items(samples: Sequence[Sample], sizes: Sequence[MediaInfo | MediaError], video_repeat: int,
                 enable_bucket: bool) -> list[Item]:
    """Images once, then videos ``video_repeat`` times (the original's order); unprobeable files left out."""
    usable = []
    for sample, size in zip(samples, sizes):
        if isinstance(size, MediaError):
            logger.warning("leaving out sample %d: %s", sample.index, size)
            continue
        bucket = closest_bucket(size.height, size.width) if enable_bucket else 0
        usable.append(Item(sample.index, sample.data_type, bucket, math.sqrt(size.height * size.width)))
    images = [item for item in usable if item.data_type == "image"]
    videos = [item for item in usable if item.data_type == "video"]
    return images + videos * video_repeat


def build_train_dataloader(cfg, *, rank: int, world_size: int, frame_interval: int = 4,
                           float_pixels: bool = True) -> TrainData:
    """The training DataLoader of one rank (see the contract for the batch dict; ``float_pixels=False`` leaves
    the three pixel tensors uint8 in [0, 255])."""
    seed = cfg.seed if cfg.seed is not None else 0
    samples = load_metadata(cfg.train_data_meta, cfg.train_data_dir)
    from easyanimate.distributed import computed_on_main
    # Rank 0 probes, every rank gets the sizes (not every rank opening every file at start-up).
    sizes = computed_on_main(lambda: native_sizes(samples))
    unreadable = sum(isinstance(size, MediaError) for size in sizes)
    if unreadable > cfg.max_bad_sample_fraction * len(samples):
        raise TooManyBadSamples(f"{unreadable} of {len(samples)} files cannot be opened (limit "
                                f"--max_bad_sample_fraction={cfg.max_bad_sample_fraction}); run `easyanimate "
                                "check-data` for the list and fixes.")
    items = sample_items(samples, sizes, cfg.video_repeat, cfg.enable_bucket)
    if not items:
        raise ValueError("no training samples: the metadata has only videos and --video_repeat is 0 (pass "
                         "--video_repeat=1), or every file failed to open.")
    rules = SizeRules.from_config(cfg, frame_interval)
    sampler = BucketBatchSampler(items, cfg.train_batch_size, rules, seed=seed, rank=rank, world_size=world_size)
    dataset = ControlVideoDataset(samples, LoadOptions(seed, cfg.video_sample_stride, cfg.text_drop_ratio),
                                  usable=[item.index for item in items],
                                  native_sizes={s.index: (size.height, size.width) for s, size in zip(samples, sizes)
                                                if isinstance(size, MediaInfo)})
    workers = cfg.dataloader_num_workers
    blocks = SharedBlocks(workers)
    loader = TrainLoader(dataset, batch_sampler=sampler, collate_fn=Collate(rules, seed, cfg.control_ref_image, blocks),
                         num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                         worker_init_fn=_single_threaded_worker if workers else None,
                         max_bad=cfg.max_bad_sample_fraction * len(sampler) * cfg.train_batch_size,
                         blocks=blocks, float_pixels=float_pixels)
    return TrainData(loader, sampler, dataset, samples)


def _single_threaded_worker(_worker_id: int) -> None:
    # N workers x N intra-op threads oversubscribes the CPU; parallelism comes from the workers.
    torch.set_num_threads(1)
    # SLURM signals every process of the step, workers included: the training process handles preemption.
    ignore_preemption_signals()
    start_decode_watchdog(DECODE_TIMEOUT_S)
    keep_freed_memory()
