"""Video and control load side by side: two threads, both waited for, each watched by the decode watchdog."""

from __future__ import annotations

import threading
import time

import pytest

from easyanimate.data import build_train_dataloader, dataset, video
from easyanimate.data.allocator import keep_freed_memory


def first_request(train, data_type: str):
    return next(b[0] for b in train.sampler if b[0].data_type == data_type)


def test_video_and_control_decode_at_the_same_time_in_two_threads(tiny_cfg, monkeypatch):
    train = build_train_dataloader(tiny_cfg(), rank=0, world_size=1)
    meeting = threading.Barrier(2, timeout=10)  # broken (and the load fails) unless both decodes are in flight
    threads = []

    class MeetingClip(video.VideoClip):
        def get(self, indices):
            threads.append(threading.get_ident())
            meeting.wait()
            return super().get(indices)

    monkeypatch.setattr(dataset, "VideoClip", MeetingClip)
    sample = train.dataset[first_request(train, "video")]
    assert len(set(threads)) == 2 and sample["pixels"].shape == sample["control"].shape


def test_images_are_read_side_by_side_too(tiny_cfg, monkeypatch):
    train = build_train_dataloader(tiny_cfg(), rank=0, world_size=1)
    meeting = threading.Barrier(2, timeout=10)
    read = dataset.read_image

    def meeting_read(path):
        meeting.wait()
        return read(path)

    monkeypatch.setattr(dataset, "read_image", meeting_read)
    sample = train.dataset[first_request(train, "image")]
    assert sample["pixels"].shape == sample["control"].shape


def test_a_failed_chain_still_waits_for_the_other_before_raising():
    started, finished = threading.Event(), []

    def slow_control():
        started.set()
        time.sleep(0.3)
        finished.append("control")
        return "control"

    def failing_video():
        started.wait(10)
        raise video.MediaError("clip.mp4: decode failed")

    with pytest.raises(video.MediaError, match="clip.mp4"):
        dataset._together(failing_video, dataset._beside(slow_control))
    assert finished == ["control"]  # no decode of this sample runs on into the next one


def test_watchdog_reports_a_stuck_decode_while_another_thread_keeps_decoding():
    hung = []
    watchdog = video.DecodeWatchdog(0.3, on_hang=lambda path, seconds: hung.append(path))
    stop = threading.Event()

    def quick_decodes():
        while not stop.is_set():
            with watchdog.watch("quick.mp4"):
                time.sleep(0.01)

    busy = threading.Thread(target=quick_decodes)
    busy.start()
    try:
        with watchdog.watch("stuck.mp4"):
            time.sleep(1.5)
    finally:
        stop.set()
        busy.join()
    assert hung == ["stuck.mp4"]


def test_decoding_processes_keep_freed_buffers_on_glibc():
    assert keep_freed_memory()
