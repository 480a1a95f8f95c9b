"""--random_ratio_crop: each batch is cropped to one of the original's 15 crop shapes, drawn with its weights."""

from collections import Counter

import numpy as np

from easyanimate.data.buckets import RANDOM_CROP_SHAPES, RANDOM_CROP_WEIGHTS, SQUARE, SizeRules, closest_bucket, \
    plan_batch


def _rules(**flags) -> SizeRules:
    return SizeRules(image_sample_size=512, video_sample_size=512, token_sample_size=512, video_sample_n_frames=9,
                     **flags)


def test_crop_shapes_follow_the_originals_weights_whatever_the_bucket():
    rng = np.random.default_rng(0)
    wide = closest_bucket(288, 512)
    draws = Counter((s.height, s.width) for s in (plan_batch(_rules(random_ratio_crop=True), "image", wide, None, rng)
                                                  for _ in range(16000)))
    assert set(draws) == set(RANDOM_CROP_SHAPES)
    total = sum(RANDOM_CROP_WEIGHTS)
    for shape, weight in zip(RANDOM_CROP_SHAPES, RANDOM_CROP_WEIGHTS):
        # binomial standard deviation at 16000 draws is below 0.004 for every shape
        assert abs(draws[shape] / 16000 - weight / total) < 0.015, shape
    assert draws[(512, 512)] > 6 * draws[(320, 768)]


def test_crop_shapes_scale_with_the_batch_side_and_stay_multiples_of_16():
    rng = np.random.default_rng(1)
    rules = SizeRules(image_sample_size=256, video_sample_size=256, token_sample_size=256, video_sample_n_frames=9,
                      random_ratio_crop=True)
    shapes = {(s.height, s.width) for s in (plan_batch(rules, "video", SQUARE, None, rng) for _ in range(2000))}
    assert shapes == {(h // 2 // 16 * 16, w // 2 // 16 * 16) for h, w in RANDOM_CROP_SHAPES}


def test_without_the_flag_or_without_buckets_the_bucket_decides():
    rng = np.random.default_rng(2)
    wide = closest_bucket(288, 512)
    assert {(plan_batch(_rules(), "image", wide, None, rng).height) for _ in range(50)} == \
        {plan_batch(_rules(), "image", wide, None, rng).height}
    no_bucket = _rules(random_ratio_crop=True, enable_bucket=False)
    assert {(s.height, s.width) for s in (plan_batch(no_bucket, "image", wide, None, rng) for _ in range(50))} == \
        {(512, 512)}
