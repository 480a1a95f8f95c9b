"""The collective timeout the SLURM layer hands a job without DeepSpeed (EASYANIMATE_COLLECTIVE_TIMEOUT_MIN, read by
training.build) fires: with a peer that stops entering collectives, the waiting rank fails within the configured
time instead of hanging until SLURM's time limit. Two real processes (accelerate launch, gloo on CPU)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from checkpoint.launching import alive, start
from slurm.launch import process_tree

STALLED_PEER = str(Path(__file__).with_name("stalled_peer.py"))
TIMEOUT_MIN = 0.05  # 3 s: fractional minutes keep the test short


@pytest.mark.integration
@pytest.mark.timeout(200)
def test_a_rank_waiting_on_a_stalled_peer_fails_within_the_collective_timeout(tmp_path):
    launched = start("plain", [STALLED_PEER, str(tmp_path)], tmp_path,
                     extra_env={"EASYANIMATE_COLLECTIVE_TIMEOUT_MIN": str(TIMEOUT_MIN)})
    result_file = tmp_path / "rank0.json"
    try:
        deadline = time.monotonic() + 120
        while not result_file.exists() and launched.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        survivors = process_tree(launched.process.pid)[1:]
        launched.kill_all()
        launched.wait(timeout=30)
    assert launched.process.poll() is not None
    deadline = time.monotonic() + 10
    while (left := [pid for pid in survivors if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "a rank outlived the test's kill (torchrun starts each in a session of its own)"
    assert result_file.exists(), launched.text()[-3000:]
    result = json.loads(result_file.read_text())
    assert result["error"] is not None and "timed out" in result["error"].lower(), result
    # the configured 3 s, not gloo's default 30 min nor the peer's exit
    assert TIMEOUT_MIN * 60 * 0.9 <= result["elapsed_s"] < TIMEOUT_MIN * 60 + 15, result
