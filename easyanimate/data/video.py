"""Decoding: videos with decord (one batched ``get_batch`` per clip), images with Pillow (one decode each).

Every function returns uint8 frames shaped (frames, height, width, 3) and raises ``MediaError`` naming the file
for anything it cannot read, so callers count and replace the sample instead of crashing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

DECODE_THREADS = 2
DECORD_SIZE_BUG_HINT = (" Some tiny frame sizes (48x48, 72x72) hit decord bug dmlc/decord#336; re-encode the video "
                        "at 64 px or more.")


class MediaError(RuntimeError):
    """A media file is missing, unreadable, or shorter than needed."""


@dataclass(frozen=True)
class MediaInfo:
    height: int
    width: int
    frames: int


def _video_reader(path: str, num_threads: int = DECODE_THREADS, size: tuple[int, int] | None = None):
    import decord  # imported lazily: decord starts threads on import and is unused by most callers

    height, width = size or (-1, -1)
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads, width=width, height=height)
    except (decord.DECORDError, RuntimeError, OSError) as err:
        raise MediaError(f"{path}: cannot open video ({err}).") from err


def probe(path: str, data_type: str) -> MediaInfo:
    """Native size and frame count (1 for images), reading headers only where the format allows."""
    if data_type == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError) as err:
            raise MediaError(f"{path}: cannot open image ({err}).") from err
        return MediaInfo(height, width, 1)
    reader = _video_reader(path, num_threads=1)
    try:
        if len(reader) == 0:
            raise MediaError(f"{path}: video has no frames.")
        height, width = reader[0].shape[:2]
        return MediaInfo(height, width, len(reader))
    finally:
        del reader


def probe_many(items: Iterable[tuple[str, str]], workers: int = 8) -> list[MediaInfo | MediaError]:
    """``probe`` over (path, data_type) pairs in threads; failures come back as MediaError values."""

    def one(item: tuple[str, str]) -> MediaInfo | MediaError:
        try:
            return probe(*item)
        except MediaError as err:
            return err

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, items))


class VideoClip:
    """An open video: its length, and frames fetched in one batched decode, at ``size`` (h, w) if given (ffmpeg
    scales inside the decoder, which is cheaper than decoding full frames and resizing them afterwards)."""

    def __init__(self, path: str, num_threads: int = DECODE_THREADS, size: tuple[int, int] | None = None):
        self.path = path
        self._reader = _video_reader(path, num_threads, size)

    def __len__(self) -> int:
        return len(self._reader)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        """(F, H, W, 3) uint8, shared with decord's buffer through DLPack (no copy)."""
        if len(self._reader) == 0:
            raise MediaError(f"{self.path}: video has no frames.")
        if max(indices) >= len(self._reader):
            raise MediaError(f"{self.path}: has {len(self._reader)} frames, frame {max(indices)} was needed.")
        try:
            return from_dlpack(self._reader.get_batch(list(indices)).to_dlpack())
        except Exception as err:  # decord raises its own and ffmpeg errors; all mean "this file is bad"
            hint = DECORD_SIZE_BUG_HINT if "DECORDArrayCopyFromTo" in str(err) else ""
            raise MediaError(f"{self.path}: decode failed ({err}).{hint}") from err

    def close(self) -> None:
        self._reader = None

    def __enter__(self) -> "VideoClip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_image(path: str) -> np.ndarray:
    """(1, H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))[None]
    except (OSError, UnidentifiedImageError) as err:
        raise MediaError(f"{path}: cannot read image ({err}).") from err
