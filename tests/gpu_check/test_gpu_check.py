"""benchmarks/gpu_check.sh: its pure parts, and its dry run (every part at tiny sizes on the CPU, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is importable from the repository root only (plain `pytest` runs)
    sys.path.insert(0, str(REPO))

from benchmarks.gpu import measure  # noqa: E402


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                        ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("Some Future GPU", None)])
def test_dense_bf16_peak_is_read_from_the_device_name(name, peak):
    assert measure.dense_bf16_peak_tflops(name) == peak


def test_most_common_call_picks_the_shape_seen_most():
    def call(shape):
        return {"args": [{"shape": shape, "dtype": "bfloat16"}], "kwargs": {"return_dict": {"value": False}}}
    calls = [call([1, 16, 13, 32, 32]), call([2, 16, 1, 64, 64]), call([1, 16, 13, 32, 32])]
    assert measure.most_common_call(calls)["args"][0]["shape"] == [1, 16, 13, 32, 32]


def test_flop_count_grows_with_the_tokens(tiny_model_v51):
    def call(frames):
        return {"args": [{"shape": [1, 4, frames, 4, 4], "dtype": "float32"}, {"shape": [1], "dtype": "float32"}],
                "kwargs": {"encoder_hidden_states": {"shape": [1, 8, 32], "dtype": "float32"},
                           "control_latents": {"shape": [1, 8, frames, 4, 4], "dtype": "float32"},
                           "return_dict": {"value": False}}}
    one, four = measure.model_flops(tiny_model_v51, call(1)), measure.model_flops(tiny_model_v51, call(4))
    assert 0 < one < four


def test_loop_overhead_is_the_share_of_each_step_outside_the_compute_phases():
    # Steps start at 0, 10 and 20 s; compute 0-6 s and 7-9 s in the first, 11-20 s (ending as the next forward
    # starts) in the second; a phase that runs on past a step's end counts only inside it.
    phases = [{"start": 0.0, "end": 6.0}, {"start": 7.0, "end": 9.0}, {"start": 11.0, "end": 20.0},
              {"start": 29.0, "end": 31.0}]
    assert measure.loop_overheads([0.0, 10.0, 20.0, 30.0], phases) == pytest.approx([0.2, 0.1, 0.9])


@pytest.mark.integration
def test_dry_run_passes_every_part(tmp_path):
    """The GPU check's own code paths on the CPU: the seed job through submit.py --local, timing and FLOPs, the
    loader, and a USR2 -> save -> resume that ends bitwise equal to an uninterrupted run."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out))
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--work",
                           str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert {name: part["status"] for name, part in parts.items()} == {
        "environment": "PASS", "prepare": "PASS", "seed_run": "PASS", "throughput": "INFO", "loader": "PASS",
        "resume_bitwise": "PASS"}
    assert parts["seed_run"]["steps"] >= 3 and parts["seed_run"]["complete"]
    assert parts["throughput"]["model_tflops_per_step"] > 0 and parts["throughput"]["pure_fwd_bwd_s"] > 0
    overheads = parts["throughput"]["loop_overheads"]  # one per timed step, each a share of its step
    assert len(overheads) == parts["seed_run"]["steps"] - 1 and all(0 <= share < 1 for share in overheads)
    bitwise = parts["resume_bitwise"]
    assert bitwise["requeue"]["signal"] == "SIGUSR2" and bitwise["resumed_from_checkpoint"]
    assert bitwise["differing_tensors"] == 0 and bitwise["tensors"] > 0
    report_lines = [line.split()[:2] for line in done.stdout.splitlines()]
    assert report_lines == [[name, part["status"]] for name, part in parts.items()] + [["gpu_check", "PASS"]]
