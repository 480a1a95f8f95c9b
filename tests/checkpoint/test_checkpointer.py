"""Checkpointer in one process under accelerate: atomic layout, manifest, verified resume, retention."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from easyanimate.training import rng_state
from easyanimate.runfolder import MANIFEST
from easyanimate.training.checkpoint import Checkpointer
from easyanimate.training.manifest import CheckpointError, file_digest, read_manifest, verify


@pytest.fixture
def trainer():
    """A tiny model, optimizer and LR scheduler prepared by a fresh single-process Accelerator."""
    AcceleratorState._reset_state(True)
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    yield accelerator, model, optimizer, scheduler
    AcceleratorState._reset_state(True)


def train_steps(parts, steps: int, generator: torch.Generator) -> None:
    accelerator, model, optimizer, scheduler = parts
    for _ in range(steps):
        x = torch.randn(4, 8, generator=generator)
        loss = (model(x) - torch.randn(4, 1)).pow(2).mean()
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def save(checkpointer, parts, step, generator):
    path = checkpointer.save(parts[0], step, {"global_step": step, "rng": rng_state.capture({"g": generator})})
    checkpointer.finish_cleanup()
    return path


def test_save_then_load_continues_bit_for_bit(trainer, tmp_path):
    checkpointer = Checkpointer(tmp_path, config_fingerprint="abc")
    generator = torch.Generator().manual_seed(1)
    train_steps(trainer, 3, generator)
    path = save(checkpointer, trainer, 3, generator)
    train_steps(trainer, 3, generator)
    expected = weights(trainer[1])

    train_steps(trainer, 5, generator)  # wander off, then come back
    state = checkpointer.load(trainer[0], path)
    rng_state.restore(state["rng"], {"g": generator})
    assert state["global_step"] == 3
    train_steps(trainer, 3, generator)
    assert all(torch.equal(a, b) for a, b in zip(expected, weights(trainer[1])))
    assert trainer[3].get_last_lr() == [1e-2 * 0.5 ** 3]


def test_checkpoint_folder_is_committed_with_a_manifest_listing_every_file(trainer, tmp_path):
    checkpointer = Checkpointer(tmp_path, config_fingerprint="abc")
    path = save(checkpointer, trainer, 7, torch.Generator())
    assert path == tmp_path / "checkpoint-7"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-7"]  # no temp folder left behind
    manifest = read_manifest(path)
    assert (manifest["step"], manifest["world_size"], manifest["config_fingerprint"]) == (7, 1, "abc")
    on_disk = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert "rank_states/rank00000.pt" in on_disk and "model.safetensors" in on_disk
    for relpath, entry in manifest["files"].items():
        assert entry["size"] == (path / relpath).stat().st_size
        assert entry["digest"] == file_digest(path / relpath, manifest["checksum"])
    assert verify(path) == []


def test_latest_skips_a_truncated_newest_checkpoint_and_says_why(trainer, tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path)
    generator = torch.Generator()
    save(checkpointer, trainer, 2, generator)
    newest = save(checkpointer, trainer, 4, generator)
    shard = newest / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with caplog.at_level(logging.INFO, logger="easyanimate.training.checkpoint"):
        chosen = checkpointer.find_resume("latest")
    assert chosen == tmp_path / "checkpoint-2"
    assert "skipping" in caplog.text and "checkpoint-4" in caplog.text and "model.safetensors" in caplog.text
    assert "truncated" in caplog.text


def test_latest_skips_a_checkpoint_with_a_flipped_byte(trainer, tmp_path):
    checkpointer = Checkpointer(tmp_path)
    save(checkpointer, trainer, 1, torch.Generator())
    newest = save(checkpointer, trainer, 2, torch.Generator())
    data = bytearray((newest / "optimizer.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / "optimizer.bin").write_bytes(bytes(data))
    assert any("checksum" in problem for problem in verify(newest))
    assert checkpointer.find_resume("latest") == tmp_path / "checkpoint-1"


def test_leftover_temp_folder_of_a_killed_save_is_never_resumed_and_is_cleaned(trainer, tmp_path):
    checkpointer = Checkpointer(tmp_path)
    save(checkpointer, trainer, 1, torch.Generator())
    (tmp_path / ".tmp-checkpoint-2" / "pytorch_model").mkdir(parents=True)
    (tmp_path / "checkpoint-3").mkdir()  # not ours: no manifest
    assert checkpointer.find_resume("latest") == tmp_path / "checkpoint-1"
    save(checkpointer, trainer, 2, torch.Generator())
    assert not (tmp_path / ".tmp-checkpoint-2").exists()


def test_no_resume_flag_or_empty_folder_starts_fresh(trainer, tmp_path):
    checkpointer = Checkpointer(tmp_path / "run")
    assert checkpointer.find_resume(None) is None
    assert checkpointer.find_resume("latest") is None


def test_explicit_checkpoint_must_exist_and_verify(trainer, tmp_path):
    checkpointer = Checkpointer(tmp_path)
    path = save(checkpointer, trainer, 5, torch.Generator())
    assert checkpointer.find_resume("checkpoint-5") == path
    assert checkpointer.find_resume(str(path)) == path
    with pytest.raises(CheckpointError, match="no such folder"):
        checkpointer.find_resume("checkpoint-6")
    (path / "rank_states" / "rank00000.pt").unlink()
    with pytest.raises(CheckpointError, match="rank00000.pt is missing"):
        checkpointer.find_resume("checkpoint-5")


def test_resume_on_another_world_size_is_announced_and_other_options_warn(trainer, tmp_path, caplog):
    path = save(Checkpointer(tmp_path, config_fingerprint="old"), trainer, 1, torch.Generator())
    with caplog.at_level(logging.WARNING):
        assert Checkpointer(tmp_path, config_fingerprint="new").find_resume("latest") == path
    assert "different training options" in caplog.text
    manifest = read_manifest(path)
    (path / MANIFEST).write_text(json.dumps({**manifest, "world_size": 8}))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert Checkpointer(tmp_path).find_resume("latest") == path
    assert "written by 8 processes and this run has 1: elastic resume" in caplog.text
    state = Checkpointer(tmp_path).load(trainer[0], path)  # rank 0's state, marked as coming from 8 ranks
    assert state["global_step"] == 1 and state["saved_world_size"] == 8


def test_retention_keeps_the_newest_and_prunes_only_after_a_save(trainer, tmp_path):
    checkpointer = Checkpointer(tmp_path, total_limit=2)
    for step in (1, 2, 3):
        save(checkpointer, trainer, step, torch.Generator())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    one = Checkpointer(tmp_path, total_limit=1)
    save(one, trainer, 4, torch.Generator())
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-4"]


def test_resuming_an_older_checkpoint_sets_newer_ones_aside_at_the_next_save(trainer, tmp_path):
    checkpointer = Checkpointer(tmp_path, total_limit=3)
    for step in (1, 2, 3):
        save(checkpointer, trainer, step, torch.Generator())
    assert checkpointer.find_resume("checkpoint-1") == tmp_path / "checkpoint-1"
    save(checkpointer, trainer, 2, torch.Generator())  # replaces the old timeline's checkpoint-2
    assert [p.name for p in checkpointer.checkpoints()] == ["checkpoint-2", "checkpoint-1"]
    # The newer one is renamed, not deleted: it may be all that is left of a run someone wants back.
    assert any(p.name.startswith("abandoned-checkpoint-3-") for p in tmp_path.iterdir())
    assert checkpointer.find_resume("latest") == tmp_path / "checkpoint-2"


def test_digests_of_big_files_catch_flips_truncation_and_a_zeroed_tail(tmp_path):
    big = tmp_path / "shard.bin"
    payload = torch.randint(0, 255, (80 << 20,), dtype=torch.uint8).numpy().tobytes()
    big.write_bytes(payload)
    full, digest = file_digest(big, "sha256"), file_digest(big, "sampled-sha256")
    assert digest != full
    flipped = bytearray(payload)
    flipped[(70 << 20) + 12345] ^= 1  # in the second 64 MiB piece, between sampled blocks
    big.write_bytes(bytes(flipped))
    assert file_digest(big, "sha256") != full
    big.write_bytes(payload[:-1])
    assert file_digest(big, "sampled-sha256") != digest
    big.write_bytes(payload[:-(1 << 20)] + bytes(1 << 20))
    assert file_digest(big, "sampled-sha256") != digest
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    assert file_digest(small, "sampled-sha256") == file_digest(small, "sha256")


def test_a_stale_attempt_cannot_commit_a_checkpoint(trainer, tmp_path, monkeypatch):
    from easyanimate import runfolder
    monkeypatch.setenv(runfolder.ATTEMPT_ENV, "7.0")
    runfolder.claim(tmp_path, "7.1")  # a newer attempt owns the run folder
    checkpointer = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="7.1"):
        checkpointer.save(trainer[0], 2, {"global_step": 2})
    assert runfolder.committed_checkpoints(tmp_path) == []
