"""Attempt classification and retry budgets, from hand-built evidence (the cluster tests produce the real one)."""

from __future__ import annotations

from pathlib import Path

from easyanimate import runfolder
from slurm import attempts
from slurm.attempts import Evidence, classify

REPO = Path(__file__).resolve().parents[2]

T0 = 1_000_000.0
LIMIT_END = T0 + 3600  # the attempt's time limit


def evidence(**kw) -> Evidence:
    base = dict(started=T0, now=T0 + 100, expected_nodes=2, signal_lead_s=300, end_time=LIMIT_END,
                nodes=[node(0), node(1)])
    return Evidence(**{**base, **kw})


def node(rank: int, exit_code: int | None = 0, signals: tuple = ()) -> dict:
    record = {"node_rank": rank, "hostname": f"n{rank}", "signals": [{"name": s, "time": t} for s, t in signals]}
    if exit_code is not None:
        record["exit_code"] = exit_code
    return record


def marker(step=40, signal="SIGUSR2", received=T0 + 50, committed=T0 + 53):
    return {"step": step, "signal": signal, "checkpoint": f"/out/checkpoint-{step}", "time": committed,
            "signal_received_at": received}


def signalled(name="USR2", at=T0 + 50):
    return [node(0, 1, ((name, at),)), node(1, 1, ((name, at + 0.01),))]


def test_complete_marker_means_completed_whatever_the_exit_codes():
    out = classify(evidence(complete_marker={"step": 100, "checkpoint": "/o/checkpoint-100"}, srun_status=1))
    assert (out.kind, out.requeue, out.step) == ("completed", False, 100)


def test_signal_well_before_the_limit_with_a_committed_save_is_a_preemption_we_requeue():
    out = classify(evidence(nodes=signalled(), requeue_marker=marker()))
    assert (out.kind, out.requeue, out.step, out.save_latency_s) == ("preempted", True, 40, 3.0)


def test_slurm_preempt_time_makes_it_a_preemption_even_near_the_limit():
    out = classify(evidence(nodes=signalled(at=LIMIT_END - 290), requeue_marker=marker(received=LIMIT_END - 290),
                            preempt_time=True))
    assert out.kind == "preempted"


def test_signal_at_the_lead_time_before_the_limit_is_a_timeout():
    # slurmctld checks limits every 30 s: the signal may come up to ~30 s earlier than --signal's @300.
    at = LIMIT_END - 325
    out = classify(evidence(nodes=signalled(at=at), requeue_marker=marker(received=at, committed=at + 4)))
    assert (out.kind, out.requeue) == ("timed_out", True)


def test_short_time_limits_do_not_turn_every_signal_into_a_timeout():
    # submitit calls any signal a time-out when the limit is under 10 min; here a 5-min job preempted at 60 s is not.
    out = classify(evidence(end_time=T0 + 300, signal_lead_s=30, nodes=signalled(at=T0 + 60),
                            requeue_marker=marker(received=T0 + 60, committed=T0 + 61)))
    assert out.kind == "preempted"


def test_when_slurm_sent_term_to_the_batch_shell_we_never_requeue_on_top():
    out = classify(evidence(nodes=signalled("TERM"), requeue_marker=marker(signal="SIGTERM"), batch_signal="TERM"))
    assert out.kind == "preempted" and not out.requeue and "SLURM itself" in out.detail


# What scontrol show job said at the SIGTERM, measured on the test cluster (Slurm 22.05).
AT_TIME_LIMIT = {"JobState": "COMPLETING", "Reason": "TimeLimit", "Restarts": "0"}
AT_SCANCEL = {"JobState": "COMPLETING", "Reason": "None", "Restarts": "0"}
AT_REQUEUE_OR_PREEMPTION = {"JobState": "COMPLETING", "Reason": "None", "Restarts": "1"}


def test_only_the_time_limit_reads_as_a_time_limit_at_sigterm():
    assert attempts.at_time_limit(AT_TIME_LIMIT, restart_count=0)
    assert attempts.at_time_limit({"JobState": "TIMEOUT", "Reason": "TimeLimit", "Restarts": "0"}, restart_count=0)
    assert not attempts.at_time_limit(AT_SCANCEL, restart_count=0)
    assert not attempts.at_time_limit(AT_REQUEUE_OR_PREEMPTION, restart_count=0)
    # once requeued (by us, at the limit) it is SLURM's requeue that counts: never a second one
    assert not attempts.at_time_limit({**AT_TIME_LIMIT, "Restarts": "1"}, restart_count=0)


def test_a_save_on_the_sigterm_of_the_time_limit_is_requeued_by_us_slurm_never_does():
    nodes = [node(0, None, (("TERM", LIMIT_END),)), node(1, None, (("TERM", LIMIT_END),))]
    out = classify(evidence(nodes=nodes, batch_signal="TERM", time_limit=True,
                            requeue_marker=marker(signal="SIGTERM", received=LIMIT_END, committed=LIMIT_END + 2)))
    assert (out.kind, out.requeue, out.step) == ("timed_out", True, 40)


def test_a_time_limit_before_any_signal_save_comes_back_from_the_checkpoint_the_attempt_committed():
    nodes = [node(0, None, (("TERM", LIMIT_END),)), node(1, None, (("TERM", LIMIT_END),))]
    out = classify(evidence(nodes=nodes, batch_signal="TERM", time_limit=True, resumed_step=20,
                            committed={"step": 50, "path": "/out/checkpoint-50"}))
    assert (out.kind, out.requeue, out.step, out.checkpoint) == ("timed_out", True, 50, "/out/checkpoint-50")


def test_a_time_out_that_committed_nothing_new_is_not_requeued():
    nodes = [node(0, None, (("TERM", LIMIT_END),)), node(1, None, (("TERM", LIMIT_END),))]
    same = {"step": 50, "path": "/out/checkpoint-50"}
    out = classify(evidence(nodes=nodes, batch_signal="TERM", time_limit=True, resumed_step=50, committed=same))
    assert (out.kind, out.requeue) == ("timed_out", False) and "nothing newer" in out.detail
    saved_nothing_new = marker(step=50, signal="SIGTERM", received=LIMIT_END, committed=LIMIT_END + 1)
    out = classify(evidence(nodes=nodes, batch_signal="TERM", time_limit=True, resumed_step=50, committed=same,
                            requeue_marker=saved_nothing_new))
    assert (out.kind, out.requeue) == ("timed_out", False)


def test_a_node_that_failed_without_a_signal_is_a_crash_and_never_requeued():
    # node 0 raised; srun --kill-on-bad-exit then sent TERM to node 1, which must not make it look preempted.
    nodes = [node(0, 1), node(1, 0, (("TERM", T0 + 60),))]
    out = classify(evidence(nodes=nodes, srun_status=1))
    assert (out.kind, out.requeue) == ("crashed", False)
    assert "node 0" in out.detail


def test_a_stale_requeue_marker_is_ignored_by_the_caller():
    # fresh_marker drops markers older than the attempt; without one, a failing exit is a crash.
    out = classify(evidence(nodes=[node(0, 1), node(1, 1)], srun_status=1))
    assert out.kind == "crashed"


def test_missing_node_records_mean_node_failure_and_a_requeue():
    out = classify(evidence(nodes=[node(0, 0, (("TERM", T0 + 70),)), node(1, exit_code=None)], srun_status=1))
    assert (out.kind, out.requeue) == ("node_failure", True)
    assert "[1]" in out.detail


def test_a_crash_after_a_signal_without_a_committed_save_is_a_crash_not_a_preemption():
    # OOM or a full disk during the signal-triggered save: the ranks exit, requeue.json never appears.
    out = classify(evidence(nodes=signalled()))
    assert (out.kind, out.requeue) == ("crashed", False) and "save failed" in out.detail


def test_a_lost_node_is_a_node_failure_even_when_its_peers_crashed_on_losing_it():
    out = classify(evidence(nodes=[node(0, 1), node(1, exit_code=None)], srun_status=1))
    assert (out.kind, out.requeue) == ("node_failure", True)


def test_we_never_requeue_on_top_of_slurms_own_node_failure_requeue():
    lost = [node(0, 1, (("TERM", T0 + 60),)), node(1, exit_code=None)]
    assert classify(evidence(nodes=lost, batch_signal="TERM")).requeue is False
    out = classify(evidence(nodes=[node(0, 1), node(1, exit_code=None)], slurm_requeued=True))
    assert (out.kind, out.requeue) == ("node_failure", False) and "SLURM requeues it itself" in out.detail
    assert attempts.slurm_requeued({"JobState": "RUNNING", "Restarts": "2"}, restart_count=1)
    assert attempts.slurm_requeued({"JobState": "PENDING", "Restarts": "0"}, restart_count=0)
    assert not attempts.slurm_requeued({"JobState": "RUNNING", "Restarts": "1"}, restart_count=1)


def test_a_resubmitted_job_shares_the_budgets_of_the_jobs_before_it(tmp_path):
    attempts.record_job(tmp_path, "10", local=False)
    attempts.record_job(tmp_path, "11", local=False)
    attempts.record_job(tmp_path, "12", local=False, resubmit_of="10")
    attempts.record_job(tmp_path, "13", local=False, resubmit_of="12")
    assert attempts.lineage(tmp_path, "13") == {"10", "12", "13"}
    assert attempts.lineage(tmp_path, "11") == {"11"}


def test_scancel_is_a_cancellation():
    out = classify(evidence(nodes=signalled("TERM"), batch_signal="TERM", srun_status=143))
    assert (out.kind, out.requeue) == ("cancelled", False)


def test_each_kind_has_its_own_budget():
    limits = {"max_preemptions": 2, "max_timeouts": 1, "max_node_failures": 0}
    assert attempts.over_budget([{"kind": "preempted"}] * 2 + [{"kind": "timed_out"}], limits) is None
    assert "max_preemptions=2" in attempts.over_budget([{"kind": "preempted"}] * 3, limits)
    assert "max_timeouts=1" in attempts.over_budget([{"kind": "timed_out"}] * 2, limits)
    assert "max_node_failures=0" in attempts.over_budget([{"kind": "node_failure"}], limits)
    assert attempts.over_budget([{"kind": "crashed"}] * 5, limits) is None  # crashes are never requeued at all


def test_fresh_marker_ignores_markers_from_earlier_attempts(tmp_path):
    runfolder.write_json_atomic(tmp_path / "requeue.json", {"step": 3, "time": T0 - 1})
    assert runfolder.read_marker(tmp_path, "requeue.json", since=T0) is None
    runfolder.write_json_atomic(tmp_path / "requeue.json", {"step": 5, "time": T0 + 1})
    assert runfolder.read_marker(tmp_path, "requeue.json", since=T0)["step"] == 5


def test_latest_checkpoint_counts_only_committed_folders(tmp_path):
    for step, committed in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if committed:
            (folder / "manifest.json").write_text("{}")
    (tmp_path / ".tmp-checkpoint-40").mkdir()
    assert runfolder.latest_checkpoint(tmp_path) == {"step": 20, "path": str(tmp_path / "checkpoint-20")}


def test_attempts_are_ordered_by_job_then_restart(tmp_path):
    for name in ("12.10", "12.2", "9.0", "12.0"):
        (tmp_path / "attempts" / name).mkdir(parents=True)
    assert [p.name for p in attempts.attempt_dirs(tmp_path)] == ["9.0", "12.0", "12.2", "12.10"]


def test_a_node_killed_after_killwait_still_counts_as_signalled_not_failed():
    nodes = [node(0, None, (("TERM", T0 + 60),)), node(1, None, (("TERM", T0 + 60),))]
    out = classify(evidence(nodes=nodes, batch_signal="TERM", requeue_marker=marker(signal="SIGTERM")))
    assert out.kind == "preempted"
    assert classify(evidence(nodes=nodes, batch_signal="TERM")).kind == "cancelled"


# --- begin/end on a job folder (no SLURM needed) -----------------------------------------------------------

def folder_spec(tmp_path, **options):
    from slurm import jobs
    return jobs.build_spec({"job_dir": str(tmp_path / "job"), "container": "none", "gpus_per_node": 0,
                            "nodes": 2, **options}, extra=["--max_train_steps=10"], cwd=tmp_path)


def test_an_attempt_slurm_requeued_behind_our_back_is_settled_from_its_traces(tmp_path):
    from slurm import launch
    from slurm.command import NodeContext
    spec = folder_spec(tmp_path)
    first = NodeContext("7", 2, 0, "node1", "20007", restart_count=0)
    assert launch.begin(spec, first) == 0
    folder = tmp_path / "job" / "attempts" / "7.0"
    for rank in (0, 1):  # SIGKILLed after KillWait: signals recorded, no exit code, no end record
        runfolder.write_json_atomic(folder / f"node{rank}.json", node(rank, None, (("TERM", T0 + 1e9),)))
    runfolder.write_json_atomic(tmp_path / "job" / "output" / "requeue.json", marker(step=6, received=2e9, committed=2e9 + 1))
    assert launch.begin(spec, NodeContext("7", 2, 0, "node1", "20007", restart_count=1)) == 0
    settled = runfolder.read_json(folder / "attempt.json")["outcome"]
    assert settled["kind"] == "preempted" and settled["step"] == 6 and not settled["requeue"]
    assert settled["detail"].startswith("requeued by SLURM")
    resumed = runfolder.read_json(tmp_path / "job" / "attempts" / "7.1" / "attempt.json")
    assert resumed["outcome"] is None and resumed["restart_count"] == 1


def test_begin_refuses_an_attempt_past_its_budget(tmp_path):
    from slurm import launch
    from slurm.command import NodeContext
    spec = folder_spec(tmp_path, max_node_failures=0)
    assert launch.begin(spec, NodeContext("9", 2, 0, "node1", "20009", restart_count=0)) == 0
    # attempt 9.0 left nothing behind (its nodes vanished) and SLURM requeued it: a node failure
    assert launch.begin(spec, NodeContext("9", 2, 0, "node1", "20009", restart_count=1)) == 3
    outcomes = [runfolder.read_json(p / "attempt.json")["outcome"] for p in attempts.attempt_dirs(tmp_path / "job")]
    assert [o["kind"] for o in outcomes] == ["node_failure", "budget_exhausted"]
    assert "max_node_failures=0" in outcomes[1]["detail"]


def test_a_user_cancel_is_a_cancellation_even_after_the_trainer_saved_on_sigterm():
    out = classify(evidence(nodes=signalled("TERM"), batch_signal="TERM", requeue_marker=marker(signal="SIGTERM"),
                            cancel_requested=True))
    assert (out.kind, out.requeue, out.step) == ("cancelled", False, 40)


def test_a_stale_process_of_an_older_attempt_is_refused_when_it_commits(tmp_path):
    """A real trainer process of attempt 5.0 (its environment made by the node launcher) keeps running after
    attempt 5.1 has begun: its next checkpoint commit is refused and nothing it saves after the claim counts."""
    import os
    import subprocess
    import sys
    import time

    from slurm import launch
    from slurm.command import NodeContext
    spec = folder_spec(tmp_path, nodes=1)
    old = NodeContext("5", 1, 0, "127.0.0.1", "20005", restart_count=0)
    assert launch.begin(spec, old) == 0
    env = {**os.environ, **launch.node_environment(spec, old), "STANDIN_STEP_S": "0.1", "PYTHONPATH": str(REPO)}
    assert env[runfolder.ATTEMPT_ENV] == "5.0"
    output = Path(spec.output_dir)
    trainer = subprocess.Popen([sys.executable, "tests/slurm/standin_trainer.py", f"--output_dir={output}",
                                "--max_train_steps=1000", "--checkpointing_steps=3", "--seed=1"], cwd=REPO, env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not runfolder.committed_checkpoints(output) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert launch.begin(spec, NodeContext("5", 1, 0, "127.0.0.1", "20005", restart_count=1)) == 0
        before = {p.name for p in runfolder.committed_checkpoints(output)}
        _, stderr = trainer.communicate(timeout=60)
    finally:
        trainer.kill()
    assert trainer.returncode != 0 and "StaleAttemptError" in stderr and "attempt 5.1" in stderr
    after = {p.name for p in runfolder.committed_checkpoints(output)}
    assert len(after - before) <= 1  # at most the one commit already past its fence check at the claim
    assert runfolder.current_attempt(output) == "5.1"


def test_a_refused_requeue_becomes_a_resubmission_of_the_same_job_folder(tmp_path, monkeypatch):
    import os

    from slurm import requeue
    from slurm.command import NodeContext
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/sbatch_args\nenv > {tmp_path}/sbatch_env\n"
                                    "echo '99;cluster'\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    spec = folder_spec(tmp_path)
    attempts.record_job(Path(spec.job_dir), "42", local=False)
    how = requeue.bring_back(spec, NodeContext("42", 2, 0, "node1", "20042"), "timed_out", {},
                            requeue=lambda job: "Requested operation is presently disabled",
                            slurm_view=lambda job: {"JobState": "RUNNING", "Restarts": "0"}, settle_s=0.5)
    assert how.startswith("resubmitted as job 99 (scontrol requeue 42 failed: Requested operation")
    assert (tmp_path / "sbatch_args").read_text().split() == ["--parsable", f"{spec.job_dir}/submission.sbatch"]
    assert "SLURM_JOB_ID=" not in (tmp_path / "sbatch_env").read_text()  # not taken for the new job's options
    assert attempts.submitted_jobs(Path(spec.job_dir))[-1] == {**attempts.submitted_jobs(Path(spec.job_dir))[-1],
                                                               "job_id": "99", "resubmit_of": "42"}
    assert attempts.lineage(Path(spec.job_dir), "99") == {"42", "99"}


def test_a_refused_requeue_while_slurm_requeues_the_job_itself_submits_nothing(tmp_path, monkeypatch):
    """Seen in CI: a preemption's requeue was refused while SLURM requeued the job itself, and the resubmission ran
    beside the requeued job. SLURM's own view (Restarts raised after the refusal) now decides."""
    import os

    from slurm import requeue
    from slurm.command import NodeContext
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch_called\necho 99\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = folder_spec(tmp_path)
    attempts.record_job(Path(spec.job_dir), "42", local=False)
    views = iter([{"JobState": "COMPLETING", "Restarts": "2"}, {"JobState": "PENDING", "Restarts": "3"}])
    how = requeue.bring_back(spec, NodeContext("42", 2, 0, "node1", "20042", restart_count=2), "preempted", {},
                             requeue=lambda job: "", slurm_view=lambda job: next(views), settle_s=5)
    assert how == "SLURM requeued job 42 itself (scontrol requeue 42 failed: (no message)); no resubmission"
    assert not (tmp_path / "sbatch_called").exists()
    assert [j["job_id"] for j in attempts.submitted_jobs(Path(spec.job_dir))] == ["42"]


def test_node_0_brings_a_timed_out_run_back_at_sigterm_once_it_has_progress(tmp_path, monkeypatch):
    """The time limit's SIGTERM with no save committed yet: no requeue while nothing new is committed (the save may
    still come), then one requeue from inside the job as soon as there is something to resume from."""
    from slurm import launch, requeue
    from slurm.command import NodeContext
    spec = folder_spec(tmp_path)
    here = NodeContext("8", 2, 0, "node1", "20008")
    assert launch.begin(spec, here) == 0
    folder = tmp_path / "job" / "attempts" / "8.0"
    for rank in (0, 1):
        runfolder.write_json_atomic(folder / f"node{rank}.json", node(rank, None, (("TERM", T0 + 1e9),)))
    asked = []
    monkeypatch.setattr(attempts, "scontrol_job", lambda job: AT_TIME_LIMIT)
    monkeypatch.setattr(attempts, "requeue", lambda job: asked.append(job))
    watcher = requeue.RequeueWatcher(spec, here)
    assert watcher.check() is False and asked == []  # nothing committed in this attempt yet
    checkpoint = Path(spec.output_dir) / "checkpoint-30"
    checkpoint.mkdir(parents=True)
    (checkpoint / "manifest.json").write_text("{}")
    assert watcher.check() is True and asked == ["8"]
    outcome = runfolder.read_json(folder / "attempt.json")["outcome"]
    assert (outcome["kind"], outcome["requeue"], outcome["step"]) == ("timed_out", True, 30)
    assert "requeued job 8 by node 0's launcher" in outcome["detail"]
    monkeypatch.setattr(attempts, "scontrol_job", lambda job: AT_SCANCEL)  # the same TERM from scancel: never
    other = NodeContext("8", 2, 0, "node1", "20008", restart_count=1)
    assert launch.begin(spec, other) == 0
    for rank in (0, 1):
        runfolder.write_json_atomic(tmp_path / "job" / "attempts" / "8.1" / f"node{rank}.json",
                                    node(rank, None, (("TERM", T0 + 2e9),)))
    (Path(spec.output_dir) / "checkpoint-40").mkdir()
    (Path(spec.output_dir) / "checkpoint-40" / "manifest.json").write_text("{}")
    assert requeue.RequeueWatcher(spec, other).check() is False and asked == ["8"]


def test_a_teardown_that_hangs_after_completion_is_ended_after_the_grace(tmp_path):
    """The training tree (a parent and a child in a session of its own, as torchrun's workers) keeps running after
    complete.json: the launcher ends all of it ``grace_s`` later and reports success. Without the marker, or when
    the training exits by itself, its own exit code stands and nothing is killed."""
    import subprocess
    import sys
    import time

    from slurm import launch
    tree = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
            "start_new_session=True); time.sleep(300)")
    child = subprocess.Popen([sys.executable, "-c", tree])
    time.sleep(1.0)
    members = launch.process_tree(child.pid)
    assert len(members) == 2
    started = time.time()
    runfolder.write_marker(tmp_path, runfolder.COMPLETE_MARKER, {"step": 3, "checkpoint": None})
    assert launch.wait_training(child, tmp_path, started - 5, grace_s=1.0, every=0.2) == 0
    assert time.time() - started < 10
    time.sleep(0.2)
    assert not [pid for pid in members if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]]

    crashing = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(1.5); sys.exit(3)"])
    assert launch.wait_training(crashing, tmp_path / "none", time.time(), grace_s=0.1, every=0.2) == 3
    old_marker = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(1.5); sys.exit(4)"])
    assert launch.wait_training(old_marker, tmp_path, time.time() + 60, grace_s=0.1, every=0.2) == 4
