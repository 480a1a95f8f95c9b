"""Bad input during training: logged with its path, counted, replaced deterministically, and bounded."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from easyanimate.data import TooManyBadSamples, build_train_dataloader
from easyanimate.data.demo import _write_video


@pytest.fixture
def planted(demo_data, tmp_path):
    """The demo data plus two videos whose control files are broken: garbage bytes, and too short."""
    entries = json.loads((demo_data / "metadata_control.json").read_text())
    for entry in entries:
        for key in ("file_path", "control_file_path"):
            entry[key] = str(demo_data / entry[key])
    garbage, short = tmp_path / "garbage.mp4", tmp_path / "short.mp4"
    garbage.write_bytes(b"\x00not a video" * 64)
    _write_video(short, np.zeros((3, 64, 64, 3), np.uint8), fps=8)
    video = entries[0]
    entries += [dict(video, control_file_path=str(garbage)), dict(video, control_file_path=str(short))]
    (tmp_path / "meta.json").write_text(json.dumps(entries))
    return tmp_path, len(entries) - 2, len(entries) - 1


def run_epoch(train, epoch=0):
    train.sampler.set_epoch(epoch)
    return list(train.loader)


def test_bad_samples_are_logged_replaced_and_counted(planted, tiny_cfg, caplog):
    folder, garbage, short = planted
    cfg = tiny_cfg("--max_bad_sample_fraction=0.5", data_dir=folder, meta="meta.json")
    train = build_train_dataloader(cfg, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING):
        batches = run_epoch(train)
    assert len(batches) == len(train.sampler)
    assert train.loader.bad_sample_ids == {garbage, short}
    assert "garbage.mp4" in caplog.text and "short.mp4" in caplog.text
    reported = {i for b in batches for i in b["bad_sample_ids"].tolist()}
    assert reported == {garbage, short}
    for b in batches:
        assert not {garbage, short} & set(b["sample_ids"].tolist())
        assert b["pixel_values"].shape[0] % 2 == 0  # batches stay full


def test_replacements_are_the_same_on_every_run(planted, tiny_cfg):
    folder, *_ = planted
    cfg = tiny_cfg("--max_bad_sample_fraction=0.5", data_dir=folder, meta="meta.json")
    first = run_epoch(build_train_dataloader(cfg, rank=0, world_size=1))
    second = run_epoch(build_train_dataloader(cfg, rank=0, world_size=1))
    assert [b["sample_ids"].tolist() for b in first] == [b["sample_ids"].tolist() for b in second]
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(first, second))


def test_too_many_bad_samples_stops_the_run_with_the_entries(planted, tiny_cfg):
    folder, *_ = planted
    cfg = tiny_cfg("--max_bad_sample_fraction=0", data_dir=folder, meta="meta.json")
    with pytest.raises(TooManyBadSamples, match="check-data") as err:
        run_epoch(build_train_dataloader(cfg, rank=0, world_size=1))
    assert "garbage.mp4" in str(err.value) or "short.mp4" in str(err.value)


def test_all_videos_broken_raises_instead_of_retrying_forever(demo_data, tmp_path, tiny_cfg):
    entries = json.loads((demo_data / "metadata_control.json").read_text())
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"junk" * 100)
    for entry in entries:
        entry["file_path"] = str(demo_data / entry["file_path"])
        entry["control_file_path"] = str(garbage if entry["type"] == "video" else demo_data / entry["control_file_path"])
    (tmp_path / "meta.json").write_text(json.dumps(entries))
    cfg = tiny_cfg("--max_bad_sample_fraction=1", "--video_repeat=1", data_dir=tmp_path, meta="meta.json")
    with pytest.raises(TooManyBadSamples, match="in a row"):
        run_epoch(build_train_dataloader(cfg, rank=0, world_size=1))


def test_unopenable_files_are_left_out_at_start_or_stop_it_past_the_limit(demo_data, tmp_path, tiny_cfg):
    shutil.copytree(demo_data, tmp_path / "d")
    (tmp_path / "d" / json.loads((demo_data / "metadata_control.json").read_text())[0]["file_path"]).unlink()
    strict = tiny_cfg("--max_bad_sample_fraction=0", data_dir=tmp_path / "d")
    with pytest.raises(TooManyBadSamples, match="cannot be opened"):
        build_train_dataloader(strict, rank=0, world_size=1)
    lenient = build_train_dataloader(tiny_cfg("--max_bad_sample_fraction=0.2", data_dir=tmp_path / "d"), rank=0,
                                     world_size=1)
    assert 0 not in {i for b in run_epoch(lenient) for i in b["sample_ids"].tolist()}
