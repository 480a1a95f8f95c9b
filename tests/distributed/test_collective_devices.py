"""Collectives run on the device the process group's backend serves (NCCL: CUDA only), proven on CPU.

device_audit makes the group declare a CUDA-only backend while the real one stays gloo, and records the device of
every collective's tensors. The unit tests show the audit catches the old bug (a CPU tensor reduced under a
CUDA-only backend); the integration test runs the real trainer in 2 processes under the audit (training steps,
periodic and signal-triggered saves, the preemption agreement, a resume) and finds no collective of ours on a
device the backend does not serve.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import device_audit
from checkpoint.launching import REPO, free_port, start
from easyanimate import distributed

AUDITED_TRAINER = str(Path(__file__).with_name("audited_trainer.py"))


@pytest.mark.parametrize("config, expected", [
    ("cuda:nccl", "cuda"), ("nccl", "cuda"), ("gloo", "cpu"), ("cpu:gloo,cuda:gloo", "cpu"),
    ("cpu:gloo,cuda:nccl", "cpu"), ("xpu:xccl", "xpu")])
def test_collective_device_type_follows_the_backend(config, expected):
    assert distributed.device_type_for(config) == expected


@pytest.fixture
def cuda_only_group(tmp_path):
    """A 1-process gloo group that declares it serves CUDA only, audited; torch.distributed restored after."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    audit = device_audit.install("cuda")
    try:
        yield audit
    finally:
        audit.restore()
        dist.destroy_process_group()


def old_all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """distributed.all_true before issue 11: the device defaulted to the CPU whatever the backend."""
    tensor = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor.item() == 1.0


def test_audit_flags_a_cpu_tensor_reduced_under_a_cuda_only_backend(cuda_only_group):
    assert old_all_true(True)
    [record] = cuda_only_group.violations()
    assert record["op"] == "all_reduce" and record["devices"] == ["cpu"]
    assert record["caller"].startswith(__file__)


def test_every_package_collective_uses_the_declared_device(cuda_only_group):
    assert distributed.collective_device() == torch.device("cuda", distributed.local_rank())
    assert distributed.all_true(True) and not distributed.any_true(False)
    assert distributed.reduce_number(3.0, "mean") == 3.0
    assert distributed.gather_lists(["a"]) == ["a"]
    assert distributed.from_rank0({"x": 1}) == {"x": 1}
    distributed.barrier()
    ops = [record["op"] for record in cuda_only_group.records]
    assert ops == ["all_reduce"] * 3 + ["all_gather_object", "broadcast_object_list", "barrier"]
    assert cuda_only_group.violations() == []
    assert [r["devices"] for r in cuda_only_group.records if r["op"] == "all_reduce"] == [["cuda"]] * 3


# ---- the real trainer, 2 processes, under the audit ----

STEPS = 4


def trainer(model: Path, data: Path, out: Path) -> list[str]:
    flags = [
        f"--pretrained_model_name_or_path={model}", f"--train_data_dir={data}",
        f"--train_data_meta={data / 'metadata_control.json'}",
        f"--config_path={REPO / 'configs' / 'easyanimate_video_v5.1_magvit_qwen.yaml'}",
        "--image_sample_size=64", "--video_sample_size=32", "--token_sample_size=32", "--video_sample_stride=1",
        "--video_sample_n_frames=9", "--train_batch_size=1", "--dataloader_num_workers=0",
        "--checkpointing_steps=2", "--seed=42", f"--output_dir={out}", "--mixed_precision=no",
        "--enable_bucket", "--video_repeat=1", "--loss_type=flow", "--train_mode=control_ref",
        "--control_ref_image=first_frame", "--sample_ledger",
        "--report_to=none", f"--max_train_steps={STEPS}", "--resume_from_checkpoint=latest"]
    return [AUDITED_TRAINER, *flags]


def launch_audited(program: list[str], out: Path, audit_dir: Path, signal_after_lines: int | None = None):
    env = {"EASYANIMATE_AUDIT_DEVICE": "cuda", "EASYANIMATE_AUDIT_DIR": str(audit_dir),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    launched = start("plain", program, out.parent, extra_env=env)
    if signal_after_lines is not None:
        ledger, deadline = out / "ledger" / "rank0.jsonl", time.monotonic() + 120
        while launched.process.poll() is None and time.monotonic() < deadline:
            if ledger.exists() and len(ledger.read_text().splitlines()) >= signal_after_lines:
                launched.signal_all(signal.SIGTERM)  # as slurmstepd does (the launcher dies of USR2)
                break
            time.sleep(0.01)
    return launched.wait(180), launched.text()


def records(audit_dir: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(audit_dir.glob("rank*.jsonl"))
            for line in path.read_text().splitlines()]


@pytest.mark.integration
def test_trainer_collectives_stay_on_the_backend_device(tiny_model_v51, demo_data, tmp_path):
    out = tmp_path / "run"
    program = trainer(tiny_model_v51, demo_data, out)
    code, log = launch_audited(program, out, tmp_path / "audit-1", signal_after_lines=3)
    assert code != 0 and (out / "requeue.json").exists(), log[-4000:]
    code, log = launch_audited(program, out, tmp_path / "audit-2")
    assert code == 0, log[-4000:]
    assert "resuming from" in log and (out / "complete.json").exists()

    first, resumed = records(tmp_path / "audit-1"), records(tmp_path / "audit-2")
    ours = [r for r in first + resumed if r["ours"]]
    assert [r for r in ours if not r["ok"]] == [], "collectives off the backend's device"
    assert {r["rank"] for r in ours} == {0, 1}
    # The audit saw each kind of collective the package issues: the per-step loss and preemption agreement,
    # the save's digests and commit, the resume's choice of checkpoint, barriers.
    assert {"all_reduce", "all_gather_object", "barrier"} <= {r["op"] for r in first if r["ours"]}
    assert {"all_reduce", "all_gather_object", "broadcast_object_list"} <= {r["op"] for r in resumed if r["ours"]}
    assert all(r["caller"].startswith(str(REPO / "easyanimate" / "distributed.py")) for r in ours)
