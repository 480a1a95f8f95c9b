"""End to end with the real trainer: the demo job (tiny V5.1 model, DeepSpeed ZeRO-2 on CPU, gloo) on two SLURM
nodes, interrupted by each real preemption path, resumes to the same final step and the same weights as an
uninterrupted run; and the README's demo command."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import slurm_jobs as sj
from slurm_jobs import REPO


pytestmark = [pytest.mark.integration]
DEMO_JOB = str(REPO / "configs" / "jobs" / "demo.yaml")
STEPS = 60


def demo_flags(model: Path, data: Path) -> list[str]:
    return [f"--pretrained_model_name_or_path={model}", f"--train_data_dir={data}",
            f"--train_data_meta={data / 'metadata_control.json'}", f"--max_train_steps={STEPS}",
            "--checkpointing_steps=20"]


def weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "transformer" / "diffusion_pytorch_model.safetensors")


def interrupt_when_training(job_dir: Path, output: Path, attempt: int, action: list[str]) -> float:
    """Wait until attempt ``attempt`` has trained a few steps past its resume point, then run ``action``."""
    def ready():
        records = sj.attempt_records(job_dir)
        if not sj.running_attempt(job_dir, attempt):
            return False
        resumed = (records[attempt].get("resume_from") or {}).get("step", 0)
        return sj.trained_step(output) >= resumed + 3
    sj.wait_for(ready, 120, f"attempt {attempt} to train")
    sj.run(*action)
    return time.time()


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_preempted_three_ways_the_demo_job_resumes_to_the_uninterrupted_weights(slurm_env, tmp_path, tiny_model_v51,
                                                                               demo_data):
    flags = demo_flags(tiny_model_v51, demo_data)
    reference, ref_id = sj.submit({"nodes": 2, "job_dir": str(tmp_path / "reference"), "collective_timeout_min": 3},
                                  flags, job_file=DEMO_JOB)
    assert sj.wait_finished(ref_id, 300) == "COMPLETED", sj.status_text(Path(reference.job_dir))

    spec, job_id = sj.submit({"nodes": 2, "job_dir": str(tmp_path / "interrupted"), "collective_timeout_min": 3},
                             flags, job_file=DEMO_JOB)
    job_dir, output = Path(spec.job_dir), Path(spec.output_dir)
    interruptions = [["scancel", "--signal=USR2", job_id],                 # an admin, a drain, a user
                     ["scontrol", "requeue", job_id],                      # SIGTERM, SLURM requeues itself
                     ["sbatch", "-p", "high", "-N", "4", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 1"]]
    signalled = [interrupt_when_training(job_dir, output, n, action) for n, action in enumerate(interruptions)]
    assert sj.wait_finished(job_id, 400) == "COMPLETED", sj.status_text(job_dir)

    records = sj.attempt_records(job_dir)
    kinds = [r["outcome"]["kind"] for r in records]
    assert kinds == ["preempted", "preempted", "preempted", "completed"], sj.status_text(job_dir)
    details = [r["outcome"]["detail"] for r in records]
    assert "well before the time limit" in details[0] and "higher-priority" in details[2]
    assert "SLURM" in details[1]
    assert sj.attempts.scontrol_job(job_id)["Restarts"] == "3"
    for before, after in zip(records, records[1:]):  # each attempt resumed from the one before's checkpoint
        assert after["resume_from"]["step"] == before["outcome"]["step"] > 0
    assert [r["restart_count"] for r in records] == [0, 1, 2, 3]

    ref_out = Path(reference.output_dir)
    assert sj.runfolder.read_json(output / "complete.json")["step"] == STEPS
    assert sj.runfolder.read_json(ref_out / "complete.json")["step"] == STEPS
    got, want = weights(output), weights(ref_out)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), "resumed weights differ from the uninterrupted run"

    latencies = [r["started"] - t for r, t in zip(records[1:], signalled)]
    print(f"\nsignal -> resumed attempt started: {', '.join(f'{s:.1f}s' for s in latencies)}; "
          f"save latencies {[r['outcome'].get('save_latency_s') for r in records[:3]]}")
    text = sj.status_text(job_dir)
    assert len(text.split("\n    ")) == 5 and f"training complete at step {STEPS}" in text


@pytest.mark.timeout(600)
def test_readme_demo_command_trains_and_writes_a_checkpoint(tmp_path, tiny_model_v51, demo_data):
    demo = tmp_path / "demo"
    (demo / "models").mkdir(parents=True)
    (demo / "models" / "tiny-v5.1").symlink_to(tiny_model_v51)  # built once per session by conftest
    (demo / "data").symlink_to(demo_data)
    done = subprocess.run(["bash", "slurm/demo.sh"], cwd=REPO, capture_output=True, text=True, timeout=550,
                          env={**os.environ, "EASYANIMATE_DEMO_DIR": str(demo)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "completed: training reached step 6" in done.stdout
    output = demo / "run" / "output"
    assert (output / "checkpoint-6" / "manifest.json").is_file()
    assert (output / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert "training complete at step 6" in done.stdout
    # Watchable: status states the loss and draws the curves; the demo ends by saying where to look.
    assert "training: last logged step 6, loss " in done.stdout
    png = demo / "run" / "curves.png"
    assert f"curves: {png}" in done.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    video = output / "sample" / "step-6-0.mp4"
    assert "Where to look:" in done.stdout and str(video) in done.stdout and video.stat().st_size > 0
    node0 = next((demo / "run" / "logs").rglob("*_0_log.err")).read_text()
    assert len(re.findall(r"step \d/6 loss .* samples/s .* ETA", node0)) >= 3
