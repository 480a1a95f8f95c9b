"""Which frames of a clip to read, and how many: pure functions of their inputs.

The VAE compresses time by ``frame_interval`` (4) after the first frame, so clips hold ``k * 4 + 1`` frames.
Frames are read at ``video_sample_stride`` from the central 10-90 % of the video, as in the original; a video too
short for that falls back to the whole video, then to a smaller stride, then to all its frames (fewer than asked).
"""

from __future__ import annotations

WINDOW = (0.1, 0.9)


def trim_to_interval(frames: int, frame_interval: int = 4) -> int:
    """The largest ``k * frame_interval + 1`` that is <= frames (>= 1)."""
    if frames < 1:
        raise ValueError(f"need at least one frame, got {frames}")
    return (frames - 1) // frame_interval * frame_interval + 1


def frames_for_budget(pixels_per_frame: int, max_frames: int, budget: int, frame_interval: int = 4) -> int:
    """The largest k*interval+1 frames, at most ``max_frames``, whose pixel volume fits ``budget``.

    With budget = 49 x 512^2 this gives 49 frames at 512^2, 21 at 768^2 and 9 at 1024^2 (the seed's examples).
    Returns 1 when not even two latent frames fit.
    """
    fitting = min(max_frames, budget // pixels_per_frame)
    return trim_to_interval(max(fitting, 1), frame_interval)


def select_frame_indices(video_length: int, n_frames: int, stride: int, u: float,
                         window: tuple[float, float] = WINDOW) -> list[int]:
    """``n_frames`` indices ``stride`` apart, the start placed by ``u`` in [0, 1) among the valid starts.

    Fallbacks for short videos, in order: the whole video instead of the central window, a smaller stride, and
    finally every frame of the video (fewer than asked). Never raises for video_length >= 1.
    """
    if video_length < 1 or n_frames < 1 or stride < 1:
        raise ValueError(f"bad arguments: video_length={video_length}, n_frames={n_frames}, stride={stride}")
    if n_frames > video_length:
        return list(range(video_length))
    first, last = int(video_length * window[0]), max(int(video_length * window[1]), 1)
    span = (n_frames - 1) * stride + 1
    if span > last - first:
        first, last = 0, video_length
    if span > last - first:
        stride = (video_length - 1) // max(n_frames - 1, 1)
        span = (n_frames - 1) * stride + 1
    start = first + min(int(u * (last - first - span + 1)), last - first - span)
    return [start + i * stride for i in range(n_frames)]
