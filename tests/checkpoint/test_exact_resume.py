"""Exact resume of the real trainer (2 processes, plain DDP and DeepSpeed ZeRO-2, fp32 on CPU).

Run A trains S steps uninterrupted. Run B is the same command, SIGTERMed (the whole process tree, as slurmstepd
does) at three points and restarted each time with the same command: in the middle of a gradient accumulation,
in the step that straddles the end of epoch 0, and at the last batch of epoch 1. B must exit with a requeue
marker each time, and end with A's transformer weights (bitwise), A's per-step losses, and A's per-sample ledger:
no sample skipped or repeated.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launching import REPO, start

pytestmark = pytest.mark.integration
TRAIN = str(REPO / "easyanimate" / "train_control.py")
STEPS, ACCUMULATION = 8, 2
# With the demo data each rank has 5 batches per epoch, so epoch 0 ends inside step 3 and epoch 1 with step 5.
# A signal is sent once rank 0's ledger holds this many lines (micro-batches started):
SIGNAL_AFTER_LINES = (3, 5, 10)  # first micro-batch of step 2; last batch of epoch 0; last batch of epoch 1


def command(model: Path, data: Path, out: Path, deepspeed: bool) -> list[str]:
    flags = [
        f"--pretrained_model_name_or_path={model}", f"--train_data_dir={data}",
        f"--train_data_meta={data / 'metadata_control.json'}",
        f"--config_path={REPO / 'configs' / 'easyanimate_video_v5.1_magvit_qwen.yaml'}",
        "--image_sample_size=64", "--video_sample_size=32", "--token_sample_size=32", "--video_sample_stride=1",
        "--video_sample_n_frames=9", "--train_batch_size=1", "--video_repeat=1",
        f"--gradient_accumulation_steps={ACCUMULATION}", "--dataloader_num_workers=1", "--checkpointing_steps=4",
        "--learning_rate=1e-3", "--lr_scheduler=constant_with_warmup", "--lr_warmup_steps=2", "--seed=42",
        f"--output_dir={out}", "--mixed_precision=no", "--max_grad_norm=0.05", "--random_hw_adapt",
        "--training_with_video_token_length", "--enable_bucket", "--uniform_sampling", "--loss_type=flow",
        "--train_mode=control_ref", "--control_ref_image=first_frame", "--sample_ledger", "--report_to=none",
        f"--max_train_steps={STEPS}", "--resume_from_checkpoint=latest"]
    return [TRAIN, *flags, *(["--use_deepspeed"] if deepspeed else [])]


def run_once(mode: str, program: list[str], out: Path, signal_after: int | None = None) -> tuple[int, str]:
    launched = start(mode, program, out.parent, ds_config=REPO / "configs" / "zero_stage2_config.json")
    if signal_after is not None:
        ledger = out / "ledger" / "rank0.jsonl"
        deadline = time.monotonic() + 240
        while launched.process.poll() is None and time.monotonic() < deadline:
            if ledger.exists() and len(ledger.read_text().splitlines()) >= signal_after:
                launched.signal_all(signal.SIGTERM)
                break
            time.sleep(0.01)
    return launched.wait(300), launched.text()


@pytest.fixture(scope="module", params=["plain", "deepspeed"])
def runs(request, tiny_model_v51, demo_data, tmp_path_factory):
    """(mode, A's folder, B's folder, B's requeue markers in order)."""
    mode = request.param
    root = tmp_path_factory.mktemp(f"exact-{mode}")
    straight, interrupted = root / "A", root / "B"
    code, log = run_once(mode, command(tiny_model_v51, demo_data, straight, mode == "deepspeed"), straight)
    assert code == 0, log[-5000:]
    markers = []
    program = command(tiny_model_v51, demo_data, interrupted, mode == "deepspeed")
    for lines in SIGNAL_AFTER_LINES:
        code, log = run_once(mode, program, interrupted, signal_after=lines)
        assert code != 0, f"the signal came too late to interrupt (after {lines} ledger lines):\n{log[-3000:]}"
        markers.append(json.loads((interrupted / "requeue.json").read_text()) | {"log": log})
    code, log = run_once(mode, program, interrupted)
    assert code == 0, log[-5000:]
    return mode, straight, interrupted, markers


def test_every_signal_leaves_a_committed_checkpoint_and_a_requeue_marker(runs):
    _, _, interrupted, markers = runs
    steps = [m["step"] for m in markers]
    assert steps == sorted(set(steps)) and steps[-1] < STEPS, steps
    for marker in markers:
        assert marker["signal"] == "SIGTERM"
        assert Path(marker["checkpoint"]).name == f"checkpoint-{marker['step']}"
    assert not (interrupted / "requeue.json").exists()  # cleared by the restart
    assert json.loads((interrupted / "complete.json").read_text())["step"] == STEPS


def test_each_restart_resumes_from_the_checkpoint_the_signal_left(runs):
    _, _, interrupted, markers = runs
    for previous, marker in zip(markers, markers[1:]):
        assert f"resuming from {previous['checkpoint']}" in marker["log"]


def test_interrupted_run_ends_with_bitwise_equal_transformer_weights(runs):
    _, straight, interrupted, _ = runs
    a = load_file(straight / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(interrupted / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_interrupted_run_trains_every_sample_exactly_as_the_straight_run(runs):
    _, straight, interrupted, _ = runs
    for rank in (0, 1):
        a = (straight / "ledger" / f"rank{rank}.jsonl").read_text().splitlines()
        b = (interrupted / "ledger" / f"rank{rank}.jsonl").read_text().splitlines()
        assert len(a) == STEPS * ACCUMULATION
        assert b == a  # same samples, same order, same step and epoch: none skipped or repeated


def test_interrupted_run_logs_the_same_loss_at_every_step(runs):
    _, straight, interrupted, _ = runs

    def losses(run: Path) -> list[tuple[int, float]]:
        lines = (run / "logs" / "metrics.jsonl").read_text().splitlines()
        return [(m["step"], m["loss"]) for m in map(json.loads, lines)]
    assert losses(interrupted) == losses(straight)
