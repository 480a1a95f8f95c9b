"""Background saves in one process: staging keeps storages and views, the written files are those of a
synchronous save, commits wait for every part, failures commit nothing. (Two processes, SIGKILL and signals
during a background write: test_two_processes.py.)"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_checkpointer import train_steps, trainer, weights  # noqa: F401 (trainer is a fixture)

from easyanimate import runfolder
from easyanimate.training import async_save, rng_state
from easyanimate.training.checkpoint import Checkpointer
from easyanimate.training.manifest import CheckpointError, read_manifest, verify


def test_staged_copy_keeps_shared_storage_views_types_and_survives_later_writes():
    flat = torch.arange(12, dtype=torch.float32)
    partition = torch.zeros(8, requires_grad=True)
    state = {"a": flat[:6].view(2, 3), "b": flat[6:], "p": torch.nn.Parameter(torch.ones(2)),
             "narrowed": partition.narrow(0, 0, 4),
             "nested": [(flat, 3, "x")], "size": torch.Size([2])}
    staged = async_save.copy_to_host(state)
    flat.add_(100)  # training goes on
    assert torch.equal(staged["a"], torch.arange(6.0).view(2, 3)) and torch.equal(staged["b"], torch.arange(6.0, 12))
    assert staged["a"].untyped_storage().data_ptr() == staged["b"].untyped_storage().data_ptr()
    assert staged["nested"][0][0].untyped_storage().data_ptr() == staged["a"].untyped_storage().data_ptr()
    assert staged["b"].storage_offset() == 6 and isinstance(staged["p"], torch.nn.Parameter)
    assert staged["nested"][0][1:] == (3, "x") and staged["size"] == torch.Size([2])
    assert staged["narrowed"].requires_grad and staged["narrowed"].is_leaf  # as torch.save writes it


def test_staging_memory_is_reused_by_the_next_save_only_after_the_previous_one_is_written():
    buffers = async_save.HostBuffers()
    first = async_save.copy_to_host({"w": torch.ones(1000)}, buffers=buffers)
    second = async_save.copy_to_host({"w": torch.full((1000,), 2.0)}, buffers=buffers)  # first still in use
    assert first["w"].data_ptr() != second["w"].data_ptr() and first["w"].sum() == 1000
    buffers.release()
    third = async_save.copy_to_host({"w": torch.full((1000,), 3.0)}, buffers=buffers)
    assert third["w"].data_ptr() in (first["w"].data_ptr(), second["w"].data_ptr())
    assert torch.equal(third["w"], torch.full((1000,), 3.0))


def save_state(generator, step):
    return {"global_step": step, "rng": rng_state.capture({"g": generator})}


def tensors(path):
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, weights_only=False)


def test_background_save_writes_what_a_synchronous_save_writes_and_resumes_bit_for_bit(trainer, tmp_path,
                                                                                       monkeypatch):
    generator = torch.Generator().manual_seed(1)
    train_steps(trainer, 3, generator)
    sync = Checkpointer(tmp_path / "sync").save(trainer[0], 3, save_state(generator, 3))
    background = Checkpointer(tmp_path / "async")
    copies = async_save.run_copies
    monkeypatch.setattr(async_save, "run_copies", lambda pairs: (__import__("time").sleep(0.5), copies(pairs)))
    promised = background.save_in_background(trainer[0], 3, save_state(generator, 3))
    assert background.in_flight.step == 3 and not promised.exists()
    train_steps(trainer, 3, generator)  # the first optimizer step waits for the slow copy, then all change
    assert background.in_flight.guard.waited_s > 0.1
    expected = weights(trainer[1])
    assert background.wait() == promised and background.in_flight is None and verify(promised) == []
    sync_files, async_files = read_manifest(sync)["files"], read_manifest(promised)["files"]
    assert sorted(sync_files) == sorted(async_files)
    for relpath in sync_files:
        if relpath.endswith(".json"):
            continue
        a, b = tensors(sync / relpath), tensors(promised / relpath)
        assert repr(a) == repr(b), relpath  # same values and structure (tensors print their values)

    train_steps(trainer, 5, generator)
    state = background.load(trainer[0], promised)
    rng_state.restore(state["rng"], {"g": generator})
    train_steps(trainer, 3, generator)
    assert all(torch.equal(a, b) for a, b in zip(expected, weights(trainer[1])))


def test_poll_commits_only_once_the_write_is_durable_and_a_failed_write_commits_nothing(trainer, tmp_path,
                                                                                       monkeypatch):
    checkpointer = Checkpointer(tmp_path)
    release = __import__("threading").Event()
    original = Checkpointer._write_staged

    def slow(self, temp, writes):
        release.wait(30)
        return original(self, temp, writes)

    monkeypatch.setattr(Checkpointer, "_write_staged", slow)
    checkpointer.save_in_background(trainer[0], 1, {"global_step": 1})
    assert checkpointer.poll() is None and runfolder.committed_checkpoints(tmp_path) == []
    release.set()
    checkpointer.in_flight.writer.wait()
    assert checkpointer.poll() == tmp_path / "checkpoint-1" and verify(tmp_path / "checkpoint-1") == []
    assert checkpointer.poll() is None  # nothing in flight: no collective, nothing to do

    def broken(self, temp, writes):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Checkpointer, "_write_staged", broken)
    checkpointer.save_in_background(trainer[0], 2, {"global_step": 2})
    with pytest.raises(CheckpointError, match="rank 0: OSError.*No space left"):
        checkpointer.wait()
    assert [p.name for p in checkpointer.checkpoints()] == ["checkpoint-1"]
    # A synchronous save after it removes the uncommitted folder and commits normally.
    monkeypatch.setattr(Checkpointer, "_write_staged", original)
    assert checkpointer.save(trainer[0], 3, {"global_step": 3}) == tmp_path / "checkpoint-3"
    assert not (tmp_path / ".tmp-checkpoint-2").exists()


def test_a_save_while_another_is_in_flight_commits_the_first_one_first(trainer, tmp_path):
    checkpointer = Checkpointer(tmp_path, total_limit=1)
    checkpointer.save_in_background(trainer[0], 1, {"global_step": 1})
    path = checkpointer.save(trainer[0], 2, {"global_step": 2})
    checkpointer.finish_cleanup()
    assert [p.name for p in checkpointer.checkpoints()] == ["checkpoint-2"] and verify(path) == []
    assert not any(p.name.startswith(runfolder.TEMP_PREFIX) for p in tmp_path.iterdir())
