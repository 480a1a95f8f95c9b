"""Runs come back, on a real four-node SLURM with the stand-in trainer: requeued from inside the job as soon as the
save is committed (a hung teardown cannot turn a time limit into a final TIMEOUT), a failed signal save is a crash,
a node that dies mid-run is a node failure that resumes, and a partition that cancels preempted jobs gets a new job."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import slurm_jobs as sj

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


@pytest.mark.timeout(600)
def test_a_time_limited_job_with_a_hung_teardown_completes_over_several_attempts(slurm_env, tmp_path):
    # 2-minute limit, warning 90 s before it (measured 17-30 s in: slurmctld checks every 30 s); 150 steps of
    # 0.25 s (37.5 s) never fit before the first warning, however fast the attempt starts. After each save rank 0
    # hangs far past the limit: only a requeue from inside the running job brings it back (measured: 3-4
    # attempts). Rank 0 hangs after completing too: each node's launcher ends the training processes 20 s after complete.json (CI once saw the last attempt, which had
    # completed, run into the limit: TIMEOUT).
    spec, job_id = sj.submit(sj.standin_options(tmp_path / "job", time="2", signal_lead_s=90, teardown_grace_s=20,
                                                env={"STANDIN_STEP_S": "0.25", "STANDIN_HANG_AFTER_SAVE_S": "300"}),
                             ["--max_train_steps=150", "--checkpointing_steps=50", "--seed=1"])
    assert sj.wait_finished(job_id, 560) == "COMPLETED", sj.status_text(Path(spec.job_dir))
    outcomes = sj.outcomes(Path(spec.job_dir))
    assert len(outcomes) >= 2 and outcomes[-1]["kind"] == "completed", sj.status_text(Path(spec.job_dir))
    for outcome in outcomes[:-1]:
        assert outcome["kind"] == "timed_out" and outcome["requeue"], outcome
        assert "by node 0's launcher" in outcome["detail"], outcome
    assert sj.runfolder.read_json(Path(spec.output_dir) / "complete.json")["step"] == 150
    logs = "".join(p.read_text() for p in (Path(spec.job_dir) / "logs").glob("*.err"))
    assert logs.count("a hung teardown") == 2, logs[-3000:]  # both nodes' launchers, once
    print(f"\n{len(outcomes)} attempts: {[o.get('step') for o in outcomes]}")


@pytest.mark.timeout(300)
def test_a_job_whose_warning_never_arrives_comes_back_from_the_time_limit_and_completes(slurm_env, tmp_path):
    # The trainer ignores the warning (USR2): the first it hears is SLURM's SIGTERM at the 1-minute limit (60-90 s
    # in: slurmctld checks limits every 30 s), which SLURM never requeues itself. 450 steps of 0.2 s never fit in
    # one attempt; node 0 requeues at the SIGTERM from what the attempt committed. The second attempt then gets a
    # longer limit: with the same 60-90 s it could time out again, and this test is about the first.
    spec, job_id = sj.submit(sj.standin_options(tmp_path / "job", time="1", signal_lead_s=20,
                                                env={"STANDIN_STEP_S": "0.2", "STANDIN_IGNORE_SIGNALS": "USR2"}),
                             ["--max_train_steps=450", "--checkpointing_steps=50", "--seed=1"])
    job_dir = Path(spec.job_dir)
    sj.wait_for(lambda: (seen := sj.outcomes(job_dir)) and seen[0].get("kind"), 150, "the first attempt to end")
    slurm_env.run("scontrol", "update", f"JobId={job_id}", "TimeLimit=5")
    assert sj.wait_finished(job_id, 150) == "COMPLETED", sj.status_text(job_dir)
    first, last = sj.attempt_records(job_dir)
    assert first["outcome"]["kind"] == "timed_out" and first["outcome"]["requeue"], sj.status_text(job_dir)
    assert "by node 0's launcher" in first["outcome"]["detail"], first["outcome"]
    assert last["outcome"]["kind"] == "completed" and last["resume_from"]["step"] >= 50
    assert sj.runfolder.read_json(Path(spec.output_dir) / "complete.json")["step"] == 450
    assert sj.attempts.scontrol_job(job_id)["Restarts"] == "1"


@pytest.mark.timeout(240)
def test_a_crash_during_the_signal_save_is_not_requeued(slurm_env, tmp_path):
    spec, job_id = sj.submit(sj.standin_options(tmp_path / "job", nodes=1, env={"STANDIN_FAIL_SIGNAL_SAVE": "1"}),
                             ["--max_train_steps=1000", "--checkpointing_steps=1000", "--seed=1"])
    sj.wait_for(lambda: (Path(spec.output_dir) / "ranks" / "rank0.json").exists(), 120, "training to start")
    sj.run("scancel", "--signal=USR2", job_id)
    assert sj.wait_finished(job_id, 120) == "FAILED", sj.status_text(Path(spec.job_dir))
    (outcome,) = sj.outcomes(Path(spec.job_dir))
    assert (outcome["kind"], outcome["requeue"]) == ("crashed", False) and "save failed" in outcome["detail"]
    assert sj.attempts.scontrol_job(job_id)["Restarts"] == "0"


def step_processes(job_id: str, node_id: str) -> list[tuple[int, str]]:
    """(pid, node name) of every process of job ``job_id``'s tasks on its node ``node_id``."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = dict(kv.split("=", 1) for kv in environ.read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_NODEID") == node_id and "SLURM_STEP_ID" in env \
                and env.get("SLURM_STEP_ID") != "batch":
            found.append((int(environ.parent.name), env.get("SLURMD_NODENAME", "")))
    return found


@pytest.mark.timeout(400)
def test_a_node_that_dies_mid_run_is_a_node_failure_and_the_run_resumes_to_the_end(slurm_env, tmp_path):
    spec, job_id = sj.submit(sj.standin_options(tmp_path / "job", env={"STANDIN_STEP_S": "0.2"}),
                             ["--max_train_steps=150", "--checkpointing_steps=20", "--seed=1"])
    output = Path(spec.output_dir)
    sj.wait_for(lambda: (sj.runfolder.latest_checkpoint(output) or {}).get("step", 0) >= 40, 180, "checkpoint 40")
    victims = step_processes(job_id, "1")
    node_name = victims[0][1]
    for pid, _ in victims:  # the machine dies: no signal handler runs, nothing is recorded
        os.kill(pid, signal.SIGKILL)
    slurm_env.run("scontrol", "update", f"NodeName={node_name}", "State=DOWN", "Reason=test-node-died")
    try:
        assert sj.wait_finished(job_id, 300) == "COMPLETED", sj.status_text(Path(spec.job_dir))
    finally:
        slurm_env.run("scontrol", "update", f"NodeName={node_name}", "State=RESUME", check=False)
    records = sj.attempt_records(Path(spec.job_dir))
    kinds = [r["outcome"]["kind"] for r in records]
    assert kinds[0] == "node_failure" and kinds[-1] == "completed", sj.status_text(Path(spec.job_dir))
    assert records[-1]["resume_from"]["step"] >= 40
    assert sj.runfolder.read_json(output / "complete.json")["step"] == 150
    assert sj.attempts.scontrol_job(job_id)["Restarts"] == str(len(records) - 1)  # one requeue per attempt, no more


@pytest.mark.timeout(400)
def test_a_partition_that_cancels_preempted_jobs_brings_the_run_back_by_resubmission(slurm_env, tmp_path):
    spec, job_id = sj.submit(sj.standin_options(tmp_path / "job", partition="cancel", env={"STANDIN_STEP_S": "0.2"}),
                             ["--max_train_steps=150", "--checkpointing_steps=50", "--seed=1"])
    job_dir, output = Path(spec.job_dir), Path(spec.output_dir)
    sj.wait_for(lambda: (output / "ranks" / "rank1.json").exists(), 120, "training to start")
    sj.run("sbatch", "-p", "high", "-N", "4", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 5")
    jobs = sj.wait_for(lambda: (j := sj.attempts.submitted_jobs(job_dir)) and len(j) == 2 and j, 120,
                       "the resubmission")
    assert jobs[1]["resubmit_of"] == job_id
    assert sj.wait_finished(jobs[1]["job_id"], 300) == "COMPLETED", sj.status_text(job_dir)
    records = sj.attempt_records(job_dir)
    first, last = records[0]["outcome"], records[-1]["outcome"]
    assert first["kind"] == "preempted" and "PreemptMode=CANCEL" in first["detail"], sj.status_text(job_dir)
    assert f"resubmitted as job {jobs[1]['job_id']}" in first["detail"]
    assert last["kind"] == "completed" and records[-1]["resume_from"]["step"] == first["step"] > 0
    assert sj.runfolder.read_json(output / "complete.json")["step"] == 150
    assert sj.attempts.scontrol_job(job_id).get("Restarts", "0") == "0"  # not requeued: a new job instead
