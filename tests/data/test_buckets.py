"""Bucket sizes, side ranges and frame counts: the seed's worked examples, reproduced."""

from __future__ import annotations

import numpy as np
import pytest

from easyanimate.data.buckets import (ASPECT_BUCKETS, SQUARE, SizeRules, bucket_size, candidate_sides,
                                      closest_bucket, frame_count, latent_tokens, plan_batch, side_range,
                                      tile_factor)


def rules(image=1024, video=1024, token=512, frames=49, adapt=True, token_length=False, **kw) -> SizeRules:
    return SizeRules(image_sample_size=image, video_sample_size=video, token_sample_size=token,
                     video_sample_n_frames=frames, random_hw_adapt=adapt, training_with_video_token_length=token_length,
                     **kw)


def drawn_shapes(r: SizeRules, data_type: str, draws: int = 400) -> set[tuple[int, int, int]]:
    """Every (h, w, frames) a square batch with large native frames can be given."""
    return {tuple(vars(plan_batch(r, data_type, SQUARE, 4096, np.random.default_rng(i))).values())
            for i in range(draws)}


def sides_and_frames(shapes):
    return min(h for h, _, _ in shapes), max(h for h, _, _ in shapes), {(h, f) for h, _, f in shapes}


@pytest.mark.parametrize("side, frames", [(256, 49), (512, 49), (768, 21), (1024, 9)])
def test_token_budget_of_512_gives_the_seeds_frame_counts(side, frames):
    r = rules(image=256, video=1024, token=512, token_length=True)
    assert frame_count(r, side, side) == frames


def test_frame_count_is_the_largest_4k_plus_1_inside_the_budget():
    r = rules(image=256, video=1024, token=512, token_length=True)
    for side in range(256, 1025, 16):
        f = frame_count(r, side, side)
        assert (f - 1) % 4 == 0 and f <= 49
        assert f * side * side <= 49 * 512 * 512
        assert f == 49 or (f + 4) * side * side > 49 * 512 * 512


def test_512x512x49_is_13312_tokens():
    r = rules(token=512, token_length=True)
    assert frame_count(r, 512, 512) == 49
    assert latent_tokens(49, 512, 512) == 13_312


def test_random_hw_adapt_example_1_images_and_videos_512_to_1024_with_49_frames():
    r = rules(image=1024, video=1024, frames=49)
    assert side_range(r, "image") == (512, 1024) and side_range(r, "video") == (512, 1024)
    low, high, pairs = sides_and_frames(drawn_shapes(r, "video"))
    assert (low, high) == (512, 1024) and {f for _, f in pairs} == {49}
    low, high, _ = sides_and_frames(drawn_shapes(r, "image"))
    assert (low, high) == (512, 1024)


def test_random_hw_adapt_example_2_images_256_to_1024_videos_256_only():
    r = rules(image=256, video=1024, frames=49)
    low, high, _ = sides_and_frames(drawn_shapes(r, "image"))
    assert (low, high) == (256, 1024)
    assert drawn_shapes(r, "video") == {(256, 256, 49)}


def test_token_length_example_1_videos_256x49_to_1024x49():
    r = rules(image=256, video=1024, token=1024, token_length=True)
    low, high, _ = sides_and_frames(drawn_shapes(r, "image"))
    assert (low, high) == (256, 1024)
    low, high, pairs = sides_and_frames(drawn_shapes(r, "video"))
    assert (low, high) == (256, 1024) and {f for _, f in pairs} == {49}


def test_token_length_example_2_videos_256x49_to_1024x9():
    r = rules(image=256, video=1024, token=512, token_length=True)
    low, high, _ = sides_and_frames(drawn_shapes(r, "image"))
    assert (low, high) == (256, 1024)
    _, _, pairs = sides_and_frames(drawn_shapes(r, "video"))
    assert (256, 49) in pairs and (768, 21) in pairs and (1024, 9) in pairs
    assert max(pairs) == (1024, 9) and min(pairs) == (256, 49)


def test_seed_command_sizes_are_multiples_of_16_in_every_bucket():
    for r in (rules(image=1024, video=256, token=512, token_length=True), rules(image=64, video=32, token=32,
                                                                               frames=9, token_length=True)):
        for bucket in range(len(ASPECT_BUCKETS)):
            for data_type in ("image", "video"):
                for side in candidate_sides(r, data_type, bucket, None):
                    h, w = bucket_size(bucket, side)
                    assert h % 16 == 0 and w % 16 == 0 and h >= 16 and w >= 16


def test_tiny_training_flags_give_videos_of_9_frames_and_images_up_to_64():
    r = rules(image=64, video=32, token=32, frames=9, token_length=True)
    assert drawn_shapes(r, "video") == {(32, 32, 9)}
    low, high, _ = sides_and_frames(drawn_shapes(r, "image"))
    assert (low, high) == (32, 64)


def test_images_take_the_top_side_three_times_in_four():
    r = rules(image=1024, video=256)
    shapes = [plan_batch(r, "image", SQUARE, 4096, np.random.default_rng(i)).height for i in range(4000)]
    assert 0.72 < shapes.count(1024) / len(shapes) < 0.78


def test_sides_above_125_percent_of_the_smallest_native_side_are_skipped():
    r = rules(image=1024, video=256, token=512, token_length=True)
    assert candidate_sides(r, "video", SQUARE, 300) == [256]
    assert max(candidate_sides(r, "video", SQUARE, 620)) == 768


@pytest.mark.parametrize("height, width, expected", [(512, 512, (512, 512)), (1080, 1920, (384, 672)),
                                                     (1920, 1080, (672, 384)), (100, 1000, (256, 1024))])
def test_closest_bucket_keeps_the_aspect_ratio(height, width, expected):
    assert ASPECT_BUCKETS[closest_bucket(height, width)] == expected


def test_bucket_scaled_to_a_side_keeps_about_side_squared_pixels():
    for bucket in range(len(ASPECT_BUCKETS)):
        h, w = bucket_size(bucket, 1024)
        assert 0.95 * 1024 ** 2 <= h * w <= 1.05 * 1024 ** 2


@pytest.mark.parametrize("frames, side, tiles", [(49, 256, 2), (1, 1024, 2), (1, 512, 4), (49, 512, 1)])
def test_token_length_tiling_matches_the_original_examples(frames, side, tiles):
    assert tile_factor(rules(token=512, token_length=True), frames, side, side) == tiles


def test_random_frame_crop_shortens_one_batch_in_ten_to_4k_plus_1():
    r = rules(image=512, video=512, adapt=False, random_frame_crop=True)
    frames = [plan_batch(r, "video", SQUARE, 4096, np.random.default_rng(i)).frames for i in range(2000)]
    assert all((f - 1) % 4 == 0 and 5 <= f <= 49 for f in frames)
    assert 0.07 < sum(f < 49 for f in frames) / len(frames) < 0.13


def test_same_token_length_on_all_nodes_cuts_frames_from_a_shared_stream():
    r = rules(image=512, video=512, adapt=False, token_length=True, keep_all_node_same_token_length=True)
    frames = {plan_batch(r, "video", SQUARE, 4096, np.random.default_rng(rank), np.random.default_rng(7)).frames
              for rank in range(8)}
    assert len(frames) == 1
    assert {plan_batch(r, "video", SQUARE, 4096, np.random.default_rng(0), np.random.default_rng(s)).frames
            for s in range(50)} > {49}
