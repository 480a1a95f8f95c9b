"""Real decoded media: frames at the chosen indices, control read at the same indices, uint8 resizing."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import torch

from easyanimate.data import build_train_dataloader
from easyanimate.data.transforms import cover_size, resize_clip
from easyanimate.data.video import VideoClip, probe

LENGTH = 30


def counter_video(path, length=LENGTH, side=32, inverted=False):
    """Flat grey frames whose level encodes the frame number (8 levels apart)."""
    levels = [(247 - 8 * k) if inverted else (8 + 8 * k) for k in range(length)]
    iio.imwrite(path, np.stack([np.full((side, side, 3), v, np.uint8) for v in levels]), plugin="pyav",
                codec="libx264", fps=8)


def frame_numbers(clip: torch.Tensor, inverted=False) -> list[int]:
    levels = ((clip + 1) * 127.5).mean(dim=(1, 2, 3))
    return [round(((247 - v) if inverted else (v - 8)) / 8) for v in levels.tolist()]


def test_video_and_control_are_read_at_the_same_stride_apart_frames(tmp_path, tiny_cfg):
    counter_video(tmp_path / "v.mp4")
    counter_video(tmp_path / "c.mp4", side=64, inverted=True)  # another file, another resolution
    (tmp_path / "m.json").write_text(json.dumps([{"file_path": "v.mp4", "control_file_path": "c.mp4",
                                                  "text": "count", "type": "video"}]))
    cfg = tiny_cfg("--train_batch_size=1", "--video_sample_stride=2", "--random_hw_adapt=false",
                   data_dir=tmp_path, meta="m.json")
    train = build_train_dataloader(cfg, rank=0, world_size=1)
    starts = set()
    for epoch in range(6):
        train.sampler.set_epoch(epoch)
        (batch,) = list(train.loader)
        video = frame_numbers(batch["pixel_values"][0])
        control = frame_numbers(batch["control_pixel_values"][0], inverted=True)
        assert video == control
        assert np.diff(video).tolist() == [2] * 8
        assert video[0] >= int(0.1 * LENGTH) and video[-1] < int(0.9 * LENGTH)
        starts.add(video[0])
    assert len(starts) > 1  # the start moves between epochs


def test_probe_reports_size_and_length(tmp_path):
    counter_video(tmp_path / "v.mp4", length=13, side=64)
    info = probe(str(tmp_path / "v.mp4"), "video")
    assert (info.height, info.width, info.frames) == (64, 64, 13)
    with VideoClip(str(tmp_path / "v.mp4")) as clip:
        assert clip.get([0, 5, 12]).shape == (3, 64, 64, 3)


def test_control_at_another_resolution_gets_the_same_region():
    assert cover_size(90, 160, 32, 32) == cover_size(180, 320, 32, 32) == (32, 57)
    video = np.zeros((1, 90, 160, 3), np.uint8)
    video[:, :, 60:100] = 255
    control = np.zeros((1, 180, 320, 3), np.uint8)
    control[:, :, 120:200] = 255
    assert (resize_clip(video, 32, 32).float() - resize_clip(control, 32, 32).float()).abs().max() < 40


def test_uint8_resize_crops_to_the_aspect_then_resizes():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 200  # the centre square that the crop must keep
    out = resize_clip(frames, 16, 16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.uint8
    assert out.float().mean() > 195


def test_decoder_scaling_matches_full_decode_then_resize(tmp_path):
    from easyanimate.data.demo import _render_frame, _scene, _write_video
    from easyanimate.data.transforms import decode_size

    height, width = 288, 352
    frames = np.stack([_render_frame(s, height, width, (200, 60, 60), 0.3 * k)
                       for k, s in enumerate(_scene(height, width, 5, seed=3))])
    _write_video(tmp_path / "v.mp4", frames, fps=8)
    size = decode_size(height, width, 128, 128)
    assert size == (128, 156)
    assert decode_size(64, 64, 32, 32) is None and decode_size(288, 352, 272, 336) is None
    with VideoClip(str(tmp_path / "v.mp4")) as full, VideoClip(str(tmp_path / "v.mp4"), size=size) as scaled:
        reference = resize_clip(full.get([0, 4]), 128, 128).float()
        result = resize_clip(scaled.get([0, 4]), 128, 128).float()
    assert (reference - result).abs().mean() < 4


def test_uint8_pixels_on_request(tiny_cfg):
    train = build_train_dataloader(tiny_cfg(), rank=0, world_size=1, float_pixels=False)
    batch = next(iter(train.loader))
    assert batch["pixel_values"].dtype == batch["control_pixel_values"].dtype == torch.uint8
