"""Decoding: videos with decord (one batched ``get_batch`` per clip), images with Pillow (one decode each).

Every function returns uint8 frames shaped (frames, height, width, 3) and raises ``MediaError`` naming the file
for anything it cannot read, so callers count and replace the sample instead of crashing. Files decord cannot
open (AV1, 10-bit, ...) and machines without a decord wheel (aarch64) fall back to PyAV, said once per process in
the log. decord's C call cannot be interrupted: in DataLoader workers a ``DecodeWatchdog`` reports a decode that
hangs, with its file, and ends the worker so the run fails with that name instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

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


logger = logging.getLogger(__name__)
_said: set[str] = set()


def _say_once(key: str, message: str, *args) -> None:
    if key not in _said:
        _said.add(key)
        logger.warning(message, *args)


class _DecordReader:
    def __init__(self, reader):
        self._reader = reader

    def __len__(self) -> int:
        return len(self._reader)

    def frame_size(self) -> tuple[int, int]:
        return tuple(self._reader[0].shape[:2])

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        # Shared with decord's buffer through DLPack (no copy).
        return from_dlpack(self._reader.get_batch(list(indices)).to_dlpack())


class _PyAVReader:
    """The same three calls over PyAV (decodes from the start to the last frame needed; scales in swscale)."""

    def __init__(self, path: str, num_threads: int, size: tuple[int, int] | None):
        import av

        self.path, self._size = path, size
        try:
            self._container = av.open(path)
            stream = self._container.streams.video[0]
            self._length = stream.frames or self._count_frames()
        except (av.error.FFmpegError, IndexError, OSError) as err:
            raise MediaError(f"{path}: cannot open video ({err}).") from err
        stream.thread_type, stream.codec_context.thread_count = "AUTO", num_threads
        self._stream = stream

    def _count_frames(self) -> int:
        import av

        with av.open(self.path) as container:
            return sum(1 for _ in container.decode(video=0))

    def __len__(self) -> int:
        return self._length

    def frame_size(self) -> tuple[int, int]:
        return self._stream.codec_context.height, self._stream.codec_context.width

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        wanted, last, got = set(indices), max(indices), {}
        scale = {"height": self._size[0], "width": self._size[1]} if self._size else {}
        self._container.seek(0)
        for i, frame in enumerate(self._container.decode(self._stream)):
            if i in wanted:
                got[i] = frame.reformat(format="rgb24", **scale).to_ndarray()
            if i >= last:
                break
        if len(got) < len(wanted):
            raise MediaError(f"{self.path}: PyAV decoded {len(got)} of the {len(wanted)} frames needed.")
        return torch.from_numpy(np.stack([got[i] for i in indices]))


def _video_reader(path: str, num_threads: int = DECODE_THREADS, size: tuple[int, int] | None = None):
    try:
        import decord  # imported lazily: decord starts threads on import and is unused by most callers
    except ImportError:
        _say_once("no decord", "decord is not installed (no wheel for this machine?): videos are decoded with PyAV")
        return _PyAVReader(path, num_threads, size)
    height, width = size or (-1, -1)
    try:
        return _DecordReader(decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads, width=width,
                                                height=height))
    except (decord.DECORDError, RuntimeError, OSError) as err:
        try:
            reader = _PyAVReader(path, num_threads, size)
        except MediaError:
            raise MediaError(f"{path}: cannot open video ({err}).") from err
        _say_once("decord fallback", "decord cannot open %s (%s); PyAV decodes it and files like it (said once)",
                  path, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return reader


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
        height, width = reader.frame_size()
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
    scales inside the decoder: cheaper than a full decode and a resize only for large reductions, see
    ``transforms.SCALE_IN_DECODER_BELOW``)."""

    def __init__(self, path: str, num_threads: int = DECODE_THREADS, size: tuple[int, int] | None = None):
        self.path = path
        self._reader = _video_reader(path, num_threads, size)

    def __len__(self) -> int:
        return len(self._reader)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        """(F, H, W, 3) uint8 (decord: shared with its buffer, no copy)."""
        if len(self._reader) == 0:
            raise MediaError(f"{self.path}: video has no frames.")
        if max(indices) >= len(self._reader):
            raise MediaError(f"{self.path}: has {len(self._reader)} frames, frame {max(indices)} was needed.")
        try:
            with watching(self.path):
                return self._reader.frames(indices)
        except MediaError:
            raise
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
        with watching(path), Image.open(path) as image:
            return np.array(image.convert("RGB"))[None]
    except (OSError, UnidentifiedImageError) as err:
        raise MediaError(f"{path}: cannot read image ({err}).") from err


# ---- a watchdog for decodes that never return ----

HUNG_DECODE_EXIT = 70  # EX_SOFTWARE


def _end_worker(path: str, seconds: float) -> None:
    message = (f"decoding {path} has not returned after {seconds:.0f} s (a hung decoder call cannot be "
               f"interrupted): ending this DataLoader worker (pid {os.getpid()}). Remove or re-encode the file.")
    logger.error(message)
    os.write(2, (message + "\n").encode())
    os._exit(HUNG_DECODE_EXIT)


class DecodeWatchdog:
    """A daemon thread that calls ``on_hang(path, seconds)`` once a decode inside ``watch(path)`` has run longer
    than ``timeout_s`` (default: log the file and end the process, which the DataLoader reports)."""

    def __init__(self, timeout_s: float, on_hang: Callable[[str, float], None] = _end_worker):
        self.timeout_s, self.on_hang = timeout_s, on_hang
        self._current: dict[int, tuple[str, float]] = {}  # by thread: video and control decode side by side
        self._thread = threading.Thread(target=self._run, name="decode-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watch(self, path: str):
        thread = threading.get_ident()
        self._current[thread] = (path, time.monotonic())
        try:
            yield
        finally:
            self._current.pop(thread, None)

    def _run(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout_s / 4))
            for path, started in list(self._current.values()):
                if time.monotonic() - started > self.timeout_s:
                    self.on_hang(path, time.monotonic() - started)
                    return


_watchdog: DecodeWatchdog | None = None


def start_decode_watchdog(timeout_s: float, **kwargs) -> DecodeWatchdog:
    """In a DataLoader worker (``worker_init_fn``): watch every decode of this process from now on."""
    global _watchdog
    _watchdog = DecodeWatchdog(timeout_s, **kwargs)
    return _watchdog


def watching(path: str):
    return _watchdog.watch(path) if _watchdog is not None else contextlib.nullcontext()
