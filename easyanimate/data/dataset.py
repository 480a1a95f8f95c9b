"""One sample from one SampleRequest: decode video and control at the same frames, resize, drop text.

Video and control are two independent chains (decode, then resize): the control's runs in a second thread of
the process while the video's runs in the first. decord and torch's resize release the GIL, and one decord
decode keeps about 1.3 cores busy, so the overlap turns idle core time into loader throughput (on 2 cores,
1024x576 clips: 0.59 -> 0.95 of a sequential decord decode of the same frames; ``benchmarks/data_loader.py``).

Everything random comes from the request (seed, epoch, position), so any worker builds the same sample. A
sample that fails to load is logged with its path and replaced by a deterministically drawn sample of the same
type; after ``MAX_ATTEMPTS`` failures in a row ``TooManyBadSamples`` is raised (never an endless retry).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import torch

from .frames import select_frame_indices
from .metadata import Sample
from .sampler import SampleRequest
from .seeding import Stream, rng
from .transforms import decode_size, resize_clip
from .video import MediaError, VideoClip, read_image

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 16


class TooManyBadSamples(RuntimeError):
    """Too many samples failed to load; the message says how many and how to find them."""


@dataclass(frozen=True)
class LoadOptions:
    seed: int
    video_sample_stride: int
    text_drop_ratio: float
    decode_threads: int = 2


class ControlVideoDataset(torch.utils.data.Dataset):
    """Indexed by SampleRequest (from BucketBatchSampler), not by int."""

    def __init__(self, samples: Sequence[Sample], options: LoadOptions, usable: Sequence[int] | None = None,
                 native_sizes: dict[int, tuple[int, int]] | None = None):
        self.samples, self.options = list(samples), options
        self.native_sizes = native_sizes or {}
        allowed = set(range(len(self.samples)) if usable is None else usable)
        self._by_type = {kind: [s.index for s in self.samples if s.data_type == kind and s.index in allowed]
                         for kind in ("video", "image")}
        self._known_bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, request: SampleRequest) -> dict:
        bad: list[int] = []
        index = request.index
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                index = self._replacement(request, attempt)
            if index in self._known_bad:
                bad.append(index)
                continue
            try:
                pixels, control = self._load(self.samples[index], request, attempt)
            except MediaError as err:
                logger.warning("bad sample %d (%s); replacing it: %s", index, self.samples[index].file_path, err)
                self._known_bad.add(index)
                bad.append(index)
                continue
            return {"pixels": pixels, "control": control, "text": self._text(index, request), "index": index,
                    "request": request, "bad": bad}
        raise TooManyBadSamples(f"{MAX_ATTEMPTS} samples in a row failed to load while building batch "
                                f"{request.batch} of epoch {request.epoch} (metadata entries {sorted(set(bad))}); "
                                "run `easyanimate check-data` to list every bad file.")

    def _replacement(self, request: SampleRequest, attempt: int) -> int:
        pool = self._by_type[request.data_type]
        choice = rng(self.options.seed, Stream.REPLACEMENT, request.epoch, request.position, attempt)
        return pool[int(choice.integers(len(pool)))]

    def _text(self, index: int, request: SampleRequest) -> str:
        draw = rng(self.options.seed, Stream.TEXT_DROP, request.epoch, request.position).random()
        return "" if draw < self.options.text_drop_ratio else self.samples[index].text

    def clip_indices(self, request: SampleRequest, video_length: int, attempt: int = 0) -> list[int]:
        """The frames of a video this request reads (the same for its control video)."""
        u = rng(self.options.seed, Stream.FRAMES, request.epoch, request.position, attempt).random()
        return select_frame_indices(video_length, request.shape.frames, self.options.video_sample_stride, u)

    def _load(self, sample: Sample, request: SampleRequest, attempt: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = request.shape
        if sample.data_type == "image":
            control = _beside(lambda: resize_clip(read_image(sample.control_file_path), shape.height, shape.width))
            return _together(lambda: resize_clip(read_image(sample.file_path), shape.height, shape.width), control)
        return self._load_video_pair(sample, request, attempt)

    def _load_video_pair(self, sample: Sample, request: SampleRequest, attempt: int) -> tuple[torch.Tensor, ...]:
        """Video and control at the same indices, each resized to the batch shape; both scaled by the decoder to
        the video's cover size when that is a clear reduction (a control of another size is brought to the
        video's)."""
        shape, threads = request.shape, self.options.decode_threads
        native = self.native_sizes.get(sample.index)
        size = native and decode_size(*native, shape.height, shape.width)
        with VideoClip(sample.file_path, threads, size) as video:
            indices = self.clip_indices(request, len(video), attempt)

            def control_chain() -> torch.Tensor:
                with VideoClip(sample.control_file_path, threads, size) as control:
                    return resize_clip(control.get(indices), shape.height, shape.width)

            return _together(lambda: resize_clip(video.get(indices), shape.height, shape.width),
                             _beside(control_chain))


_side: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a pool does not survive a fork


def _beside(work) -> Future:
    """Start ``work`` in this process's second thread."""
    global _side
    if _side is None or _side[0] != os.getpid():
        _side = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-chain"))
    return _side[1].submit(work)


def _together(work, beside: Future) -> tuple:
    """(``work()``, the result of ``beside``); ``beside`` is waited for even when ``work`` fails, so no decode of
    this sample runs on into the next one."""
    try:
        first = work()
    except BaseException:
        beside.cancel() or beside.exception()
        raise
    return first, beside.result()
