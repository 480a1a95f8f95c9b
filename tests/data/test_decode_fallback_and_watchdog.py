"""PyAV decodes what decord cannot (said once), and a decode that never returns ends its worker, naming the file."""

from __future__ import annotations

import logging
import sys
import time

import pytest
import torch

from easyanimate.data import video
from test_media import counter_video, frame_numbers


def clip_file(folder) -> str:
    path = folder / "clip.mp4"
    counter_video(path)
    return str(path)


def numbers(frames: torch.Tensor) -> list[int]:
    return frame_numbers(frames.float() / 127.5 - 1)


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    monkeypatch.setattr(video, "_said", set())


def test_pyav_reads_the_same_frames_when_decord_is_missing(tmp_path, monkeypatch, caplog):
    path = clip_file(tmp_path)
    with video.VideoClip(path) as clip:
        with_decord = clip.get([0, 3, 7])
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` raises ImportError
    with caplog.at_level(logging.WARNING, logger=video.__name__):
        with video.VideoClip(path) as clip:
            assert len(clip) == video.probe(path, "video").frames
            with_pyav = clip.get([0, 3, 7])
        video.VideoClip(path, size=(16, 16)).get([1])
    assert with_pyav.dtype == torch.uint8 and with_pyav.shape == with_decord.shape
    assert numbers(with_pyav) == numbers(with_decord) == [0, 3, 7]
    assert [r.getMessage() for r in caplog.records].count(
        "decord is not installed (no wheel for this machine?): videos are decoded with PyAV") == 1


def test_files_decord_cannot_open_fall_back_to_pyav_said_once(tmp_path, monkeypatch, caplog):
    import decord
    path = clip_file(tmp_path)

    def refuse(*_args, **_kwargs):
        raise decord.DECORDError("unsupported codec")
    monkeypatch.setattr(decord, "VideoReader", refuse)
    with caplog.at_level(logging.WARNING, logger=video.__name__):
        for _ in range(2):
            with video.VideoClip(path) as clip:
                assert numbers(clip.get([2, 4])) == [2, 4]
    notes = [r.getMessage() for r in caplog.records if "PyAV decodes it" in r.getMessage()]
    assert len(notes) == 1 and path in notes[0] and "unsupported codec" in notes[0]


def test_unreadable_file_is_still_a_media_error_naming_it(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(video.MediaError, match="bad.mp4"):
        video.VideoClip(str(bad))


def test_watchdog_reports_a_decode_past_its_timeout_and_not_a_quick_one():
    hung = []
    watchdog = video.DecodeWatchdog(0.2, on_hang=lambda path, seconds: hung.append((path, seconds)))
    with watchdog.watch("quick.mp4"):
        time.sleep(0.05)
    with watchdog.watch("stuck.mp4"):
        time.sleep(1.0)
    assert [path for path, _ in hung] == ["stuck.mp4"] and hung[0][1] > 0.2


class HangingDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        with video.watching(f"/data/clip{index}.mp4"):
            time.sleep(120)  # stands for a decoder call that never returns


def start_short_watchdog(_worker_id: int) -> None:
    video.start_decode_watchdog(0.5)


def test_a_hung_decode_ends_the_worker_and_the_run_names_the_file(capfd):
    # spawn: a fork of this process (decord's and PyAV's threads from the tests above) can deadlock.
    loader = torch.utils.data.DataLoader(HangingDataset(), num_workers=1, multiprocessing_context="spawn",
                                         worker_init_fn=start_short_watchdog)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        next(iter(loader))
    assert time.monotonic() - started < 60
    assert "decoding /data/clip0.mp4 has not returned" in capfd.readouterr().err
