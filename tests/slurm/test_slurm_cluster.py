"""The suite against a real four-node SLURM, with the stand-in trainer (fast): rendering validated by sbatch,
two nodes with distinct machine ranks, hostile values end to end, crashes not requeued, time-outs told apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slurm import jobs, render

import slurm_jobs as sj
from slurm_jobs import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

HOSTILE_NAME = "it's a \"job\" $(touch PWNED) ; echo x"
HOSTILE_PROMPT = "a 'quoted' \"prompt\" with $(touch PWNED), `touch PWNED`, \\ and EASYANIMATE_JOB_SPEC"


def test_sbatch_accepts_every_rendered_script(slurm_env, tmp_path):
    scripts = {p.name: p.read_text() for p in (REPO / "slurm" / "templates").glob("*.sbatch")}
    four_by_eight = jobs.build_spec({"nodes": 4, "gpus_per_node": 8, "image": "/images/e.sif",
                                     "job_dir": str(tmp_path / "v51")},
                                    job_file=str(REPO / "configs/jobs/v5.1_control_deepspeed.yaml"), cwd=REPO)
    scripts["4x8"] = render.sbatch_script(four_by_eight)
    hostile = sj.standin_options(tmp_path / "dir with space $HOME 'q' %j", name=HOSTILE_NAME)
    scripts["hostile"] = render.sbatch_script(jobs.build_spec(hostile, extra=["--validation_prompts", HOSTILE_PROMPT],
                                                              cwd=REPO))
    site = sj.standin_options(tmp_path / "site", exclude="node4", mail_type="END,FAIL", mail_user="root@localhost",
                              sbatch=["comment=site pass-through", "overcommit"], srun_args=["--mpi=none"],
                              setup=["module purge 2>/dev/null || true"], dependency="singleton")
    scripts["site"] = render.sbatch_script(jobs.build_spec(site, cwd=REPO))
    assert len(scripts) == 7
    for name, text in scripts.items():
        path = tmp_path / f"{len(name)}.sbatch"
        path.write_text(text)
        done = subprocess.run(["sbatch", "--test-only", "-p", "debug", str(path)], capture_output=True, text=True,
                              cwd=tmp_path)
        assert done.returncode == 0 and "to start at" in done.stderr, f"{name}: {done.stderr}"


@pytest.mark.timeout(240)
def test_two_node_job_gets_distinct_machine_ranks_and_hostile_values_intact(slurm_env, tmp_path):
    job_dir = tmp_path / "dir with space $HOME 'q' %j"
    argv = [sys.executable, "slurm/submit.py", "--job", "none", "--name", HOSTILE_NAME, "--job-dir", str(job_dir), "--nodes", "2",
            "--gpus-per-node", "0", "--container", "none", "--mixed-precision", "no", "--entry", sj.STANDIN,
            "--time", "10:00", "--signal-lead-s", "60", "--", "--max_train_steps=4", "--checkpointing_steps=2",
            "--seed=1", "--validation_prompts", HOSTILE_PROMPT]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=True)
    job_id = done.stdout.split()[2].rstrip(";")
    assert sj.wait_finished(job_id, 180) == "COMPLETED", sj.status_text(job_dir)
    output = job_dir / "output"
    ranks = [json.loads((output / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["node"]) for r in ranks] == [(0, 2, "0"), (1, 2, "1")]
    for r in ranks:
        assert r["argv"][r["argv"].index("--validation_prompts") + 1] == HOSTILE_PROMPT
    nodes = [json.loads((job_dir / "attempts" / f"{job_id}.0" / f"node{n}.json").read_text()) for n in (0, 1)]
    for n, record in enumerate(nodes):
        launch = record["argv"]
        assert launch[launch.index("--machine_rank") + 1] == str(n)
        assert launch[launch.index("--main_process_ip") + 1] == "node1"
    assert json.loads((output / "complete.json").read_text())["step"] == 4
    text = sj.status_text(job_dir)
    assert "completed" in text and "training complete at step 4" in text
    assert subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%j"], capture_output=True, text=True).stdout == ""
    assert not list(tmp_path.rglob("PWNED")) and not (REPO / "PWNED").exists()


@pytest.mark.timeout(240)
def test_a_crash_is_not_requeued_and_status_shows_the_error(slurm_env, tmp_path):
    spec, job_id = sj.submit(sj.standin_options(tmp_path / "job", env={"STANDIN_CRASH_AT_STEP": "3"}),
                             ["--max_train_steps=20", "--checkpointing_steps=2", "--seed=1"])
    assert sj.wait_finished(job_id, 180) == "FAILED"
    assert [o["kind"] for o in sj.outcomes(Path(spec.job_dir))] == ["crashed"]
    info = sj.attempts.scontrol_job(job_id)
    assert info["Restarts"] == "0"
    text = sj.status_text(Path(spec.job_dir))
    assert "RuntimeError: stand-in crash at step 3" in text and "not requeued" in text
    log = (Path(spec.job_dir) / "logs" / f"{job_id}_0_log.err").read_text()
    assert "RuntimeError: stand-in crash at step 3" in log


@pytest.mark.timeout(300)
def test_the_time_limit_signal_is_a_timeout_with_its_own_budget(slurm_env, tmp_path):
    # SLURM minimum granularity is a minute; the warning comes 30-60 s in. max_timeouts=0: no requeue.
    spec, job_id = sj.submit(sj.standin_options(tmp_path / "job", time="2", signal_lead_s=60, max_timeouts=0),
                             ["--max_train_steps=1000", "--checkpointing_steps=1000", "--seed=1"])
    state = sj.wait_finished(job_id, 200)
    (outcome,) = sj.outcomes(Path(spec.job_dir))
    assert outcome["kind"] == "timed_out", outcome
    assert not outcome["requeue"] and "max_timeouts=0" in outcome["detail"]
    assert outcome["step"] > 0 and Path(outcome["checkpoint"]).is_dir()
    assert state == "FAILED" and sj.attempts.scontrol_job(job_id)["Restarts"] == "0"


@pytest.mark.timeout(240)
def test_cancel_stops_the_job_for_good_and_is_recorded_as_cancelled(slurm_env, tmp_path):
    spec, job_id = sj.submit(sj.standin_options(tmp_path / "job"), ["--max_train_steps=1000", "--seed=1"])
    sj.wait_for(lambda: (Path(spec.output_dir) / "ranks" / "rank1.json").exists(), 120, "training to start")
    done = subprocess.run([sys.executable, "slurm/submit.py", "cancel", spec.job_dir], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert f"cancelled {job_id}" in done.stdout
    assert sj.wait_finished(job_id, 120) == "CANCELLED"
    sj.wait_for(lambda: sj.outcomes(Path(spec.job_dir))[-1].get("kind"), 30, "the attempt to be closed")
    assert [o["kind"] for o in sj.outcomes(Path(spec.job_dir))] == ["cancelled"]
    assert sj.attempts.scontrol_job(job_id)["Restarts"] == "0"
