"""The run-folder contract: names, committed checkpoints, atomic private files, markers and the attempt fence."""

from __future__ import annotations

import stat

import pytest

from easyanimate import runfolder


def test_only_folders_with_a_manifest_count_as_committed_newest_first(tmp_path):
    for step, manifest in ((5, True), (10, True), (15, False)):
        folder = runfolder.checkpoint_dir(tmp_path, step)
        folder.mkdir()
        if manifest:
            (folder / runfolder.MANIFEST).write_text("{}")
    (tmp_path / f"{runfolder.TEMP_PREFIX}20").mkdir()
    assert [runfolder.checkpoint_step(p) for p in runfolder.checkpoint_dirs(tmp_path)] == [15, 10, 5]
    assert [runfolder.checkpoint_step(p) for p in runfolder.committed_checkpoints(tmp_path)] == [10, 5]
    assert runfolder.latest_checkpoint(tmp_path)["step"] == 10
    assert runfolder.latest_checkpoint(tmp_path / "absent") is None


def test_private_json_is_never_readable_by_others_even_with_a_lax_umask(tmp_path, monkeypatch):
    import os
    old = os.umask(0)
    try:
        path = runfolder.write_json_atomic(tmp_path / "secret.json", {"WANDB_API_KEY": "x"}, mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert runfolder.read_json(path) == {"WANDB_API_KEY": "x"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_markers_are_stamped_and_older_ones_are_not_this_attempts(tmp_path, monkeypatch):
    monkeypatch.setenv(runfolder.ATTEMPT_ENV, "41.0")
    runfolder.write_marker(tmp_path, runfolder.REQUEUE_MARKER, {"step": 3})
    marker = runfolder.read_marker(tmp_path, runfolder.REQUEUE_MARKER)
    assert marker["step"] == 3 and marker["attempt"] == "41.0"
    assert runfolder.read_marker(tmp_path, runfolder.REQUEUE_MARKER, marker["time"] + 1) is None
    runfolder.clear_markers(tmp_path)
    assert runfolder.read_marker(tmp_path, runfolder.REQUEUE_MARKER) is None


def test_a_process_of_an_older_attempt_is_refused_once_a_newer_attempt_claimed_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(runfolder.ATTEMPT_ENV, "41.0")
    runfolder.claim(tmp_path, "41.0")
    runfolder.write_marker(tmp_path, runfolder.REQUEUE_MARKER, {"step": 3})  # ours: allowed
    runfolder.claim(tmp_path, "41.1")  # the requeued attempt starts
    with pytest.raises(runfolder.StaleAttemptError, match="41.1"):
        runfolder.write_marker(tmp_path, runfolder.COMPLETE_MARKER, {"step": 9})
    assert runfolder.read_marker(tmp_path, runfolder.COMPLETE_MARKER) is None
    monkeypatch.delenv(runfolder.ATTEMPT_ENV)
    runfolder.check_fence(tmp_path)  # runs outside SLURM carry no attempt id and are not fenced
