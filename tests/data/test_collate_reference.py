"""The reference frame of a batch: frame 0 (first_frame, and every image) is a view of the pixels, sharing their
memory; a random later frame is its own copy. Either way it holds the frame the reference rule chose."""

from __future__ import annotations

import torch

from easyanimate.data.buckets import SizeRules
from easyanimate.data.collate import Collate
from easyanimate.data.buckets import BatchShape
from easyanimate.data.sampler import SampleRequest


def _samples(frames: int, count: int = 2) -> list[dict]:
    shape = BatchShape(frames=frames, height=16, width=32)
    out = []
    for slot in range(count):
        pixels = torch.randint(0, 256, (frames, 3, 16, 32), dtype=torch.uint8)
        request = SampleRequest(position=slot, index=slot, data_type="video" if frames > 1 else "image", epoch=0,
                                batch=3, slot=slot, shape=shape)
        out.append({"pixels": pixels, "control": 255 - pixels, "request": request, "index": slot, "text": "t",
                    "bad": []})
    return out


def _collate(mode: str) -> Collate:
    return Collate(SizeRules(image_sample_size=32, video_sample_size=32, token_sample_size=32,
                             video_sample_n_frames=9), seed=0, control_ref_image=mode)


def test_a_first_frame_reference_is_a_view_of_the_pixels():
    for frames in (1, 9):
        samples = _samples(frames)
        batch = _collate("first_frame")(samples)
        pixels, ref = batch["pixel_values"], batch["ref_pixel_values"]
        assert ref.shape == (pixels.shape[0], 1, *pixels.shape[2:])
        assert ref.data_ptr() == pixels.data_ptr()  # the same memory, not a copy beside it
        for b in range(len(samples)):
            assert torch.equal(ref[b, 0], samples[b]["pixels"][0])


def test_a_random_later_reference_is_a_copy_of_the_chosen_frame():
    collate = _collate("random")
    samples = _samples(9, count=8)
    refs = [collate.reference_index(0, 3, s, 9) for s in range(8)]
    assert any(refs)  # p = 0.6 per sample of a later frame: 8 samples at seed 0 draw some
    batch = collate(samples)
    ref, pixels = batch["ref_pixel_values"], batch["pixel_values"]
    assert not pixels.data_ptr() <= ref.data_ptr() < pixels.data_ptr() + pixels.numel()  # not inside the pixels
    for b in range(ref.shape[0]):
        assert torch.equal(ref[b, 0], samples[b % 8]["pixels"][refs[b % 8]])
