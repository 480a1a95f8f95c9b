"""Elastic resume on the test cluster: the demo job (real trainer, ZeRO-2 on CPU) starts on two nodes, is
cancelled after a checkpoint, and `submit.py resubmit --nodes 1` continues it on one node to the last step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import slurm_jobs as sj
from slurm_jobs import REPO

from easyanimate import runfolder

pytestmark = [pytest.mark.integration, pytest.mark.slurm]
STEPS = 60  # long enough that the cancel lands mid-run however fast the two-node attempt trains


@pytest.mark.timeout(900)
def test_two_node_job_resubmitted_on_one_node_continues_from_its_checkpoint(slurm_env, tmp_path, tiny_model_v51,
                                                                           demo_data):
    flags = [f"--pretrained_model_name_or_path={tiny_model_v51}", f"--train_data_dir={demo_data}",
             f"--train_data_meta={demo_data / 'metadata_control.json'}", f"--max_train_steps={STEPS}",
             "--checkpointing_steps=3"]
    spec, first = sj.submit({"nodes": 2, "job_dir": str(tmp_path / "job"), "collective_timeout_min": 3}, flags,
                            job_file=str(REPO / "configs" / "jobs" / "demo.yaml"))
    job_dir, output = Path(spec.job_dir), Path(spec.output_dir)
    sj.wait_for(lambda: (runfolder.latest_checkpoint(output) or {}).get("step", 0) >= 3, 300,
                "the two-node attempt to commit a checkpoint")
    assert sj.run(sys.executable, str(REPO / "slurm" / "submit.py"), "cancel", str(job_dir), timeout=60).returncode == 0
    sj.wait_finished(first, 120)
    saved = runfolder.latest_checkpoint(output)["step"]
    assert saved < STEPS

    done = subprocess.run([sys.executable, "slurm/submit.py", "resubmit", str(job_dir), "--nodes", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    second = done.stdout.split()[2]
    assert sj.wait_finished(second, 400) == "COMPLETED", sj.status_text(job_dir)

    records = sj.attempt_records(job_dir)
    assert (records[0]["num_nodes"], records[0]["world_size"]) == (2, 2)
    assert (records[-1]["num_nodes"], records[-1]["world_size"]) == (1, 1)
    assert records[-1]["resume_from"]["step"] >= saved and records[-1]["outcome"]["kind"] == "completed"
    assert runfolder.read_json(output / "complete.json")["step"] == STEPS
    log = (job_dir / "logs" / f"{second}_0_log.err").read_text() + \
        (job_dir / "logs" / f"{second}_0_log.out").read_text()
    assert "elastic resume" in log and "gradient accumulation 1 -> 2" in log
    text = sj.status_text(job_dir)
    assert "2n/2p" in text and "1n/1p" in text and f"training complete at step {STEPS}" in text
