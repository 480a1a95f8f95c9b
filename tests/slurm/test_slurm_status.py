"""`submit.py status` on a job folder (no SLURM needed: SLURM's answer is given to it)."""

from __future__ import annotations

from pathlib import Path

from slurm import jobs, launch, status
from slurm import spec as specs
from slurm.command import NodeContext


def job_folder(tmp_path: Path) -> Path:
    spec = jobs.build_spec({"job_dir": str(tmp_path / "job"), "container": "none", "gpus_per_node": 0, "nodes": 1},
                           extra=["--max_train_steps=10"], cwd=tmp_path)
    Path(spec.job_dir).mkdir(parents=True, exist_ok=True)
    (Path(spec.job_dir) / "job.json").write_text(specs.to_json(spec))
    # None records an outcome; the next attempt of a job settles the one before it (41.0), a resubmission (42) can't.
    for job_id, restart in (("41", 0), ("41", 1), ("42", 0)):
        assert launch.begin(spec, NodeContext(job_id, 1, 0, "node1", "20041", restart_count=restart)) == 0
    return Path(spec.job_dir)


def test_only_the_newest_attempt_of_a_job_slurm_still_runs_shows_running(tmp_path, monkeypatch):
    folder = job_folder(tmp_path)
    states = {"41": "CANCELLED", "42": "RUNNING"}
    monkeypatch.setattr(status, "slurm_state", lambda job_id: {"state": states[job_id]})
    rows = {row["attempt"]: row for row in status.status(folder)["attempts"]}
    assert {name: row["outcome"] for name, row in rows.items()} == {
        "41.0": "node_failure", "41.1": status.UNRECORDED, "42.0": "running"}
    assert "SLURM: CANCELLED" in rows["41.1"]["detail"]
    assert "41.1" in status.format_status(status.status(folder))


def test_a_job_slurm_has_forgotten_does_not_run_any_more(tmp_path, monkeypatch):
    folder = job_folder(tmp_path)
    monkeypatch.setattr(status, "slurm_state", lambda job_id: {"state": "unknown to SLURM (finished long ago)"})
    assert [row["outcome"] for row in status.status(folder)["attempts"]][1:] == [status.UNRECORDED] * 2
