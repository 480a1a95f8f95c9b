"""Frame index selection: stride, the central window, and the fallbacks for short videos."""

from __future__ import annotations

import itertools

import pytest

from easyanimate.data.frames import frames_for_budget, select_frame_indices, trim_to_interval


@pytest.mark.parametrize("frames, trimmed", [(1, 1), (4, 1), (5, 5), (8, 5), (9, 9), (49, 49), (50, 49)])
def test_trim_to_interval_keeps_4k_plus_1(frames, trimmed):
    assert trim_to_interval(frames) == trimmed


def test_frames_for_budget_never_returns_zero():
    assert frames_for_budget(4096 * 4096, 49, 49 * 512 * 512) == 1


def test_indices_are_stride_apart_inside_the_central_window():
    for u in (0.0, 0.3, 0.999):
        indices = select_frame_indices(100, 9, 3, u)
        assert [b - a for a, b in itertools.pairwise(indices)] == [3] * 8
        assert indices[0] >= 10 and indices[-1] < 90


def test_start_spans_the_window_from_u_0_to_u_1():
    assert select_frame_indices(100, 9, 3, 0.0)[0] == 10
    assert select_frame_indices(100, 9, 3, 0.9999)[-1] == 89


def test_short_video_falls_back_to_the_whole_video_then_a_smaller_stride():
    assert select_frame_indices(27, 9, 3, 0.0) == list(range(0, 27, 3))  # 25 frames needed, window holds 20
    indices = select_frame_indices(20, 9, 3, 0.5)
    assert len(indices) == 9 and [b - a for a, b in itertools.pairwise(indices)] == [2] * 8


def test_video_shorter_than_the_clip_gives_all_its_frames():
    assert select_frame_indices(6, 9, 1, 0.7) == [0, 1, 2, 3, 4, 5]


def test_indices_always_valid_and_increasing():
    for length, n, stride in itertools.product(range(1, 40), (1, 5, 9, 17), (1, 2, 4)):
        for u in (0.0, 0.5, 0.9999):
            indices = select_frame_indices(length, n, stride, u)
            assert len(indices) == min(n, length)
            assert all(0 <= i < length for i in indices)
            assert all(b > a for a, b in itertools.pairwise(indices))
