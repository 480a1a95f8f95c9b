"""Checkpoints that are complete or absent, and the choice of which one to resume from.

Every rank writes into ``output_dir/.tmp-checkpoint-STEP`` (accelerate's ``save_state``, which under DeepSpeed is
a collective writing one ZeRO shard per rank, plus this rank's own state: cursor, sampler, RNG streams), fsyncs
and checksums the files it wrote, and reports them. When every rank has reported, rank 0 writes
``manifest.json`` last (step, world size, config fingerprint, size and checksum of every file: ``manifest.py``),
fsyncs it and renames the folder to ``output_dir/checkpoint-STEP``. A folder with that name therefore holds a
finished save; resume still re-checks sizes and checksums, because disks and people truncate files. DeepSpeed's
own ``latest`` file is written before other ranks' shards are on disk and is never read here. Old checkpoints are
pruned only after a save has committed, and never the one just written.

``save_in_background`` writes the same files: it stages them in host memory (``async_save``) and returns, a
thread writes, fsyncs and checksums this rank's part, and at a later step boundary ``poll`` (one all-reduce:
"is every rank's part durable?") lets rank 0 commit exactly as above. Any save first waits for one in flight, so
commits happen in step order; a failed background write is raised on every rank and commits nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from easyanimate import distributed, runfolder
from easyanimate.training import elastic
from easyanimate.runfolder import (ABANDONED_PREFIX, DELETING_PREFIX, MANIFEST, TEMP_PREFIX, checkpoint_step,
                                   fsync_dir, write_json_atomic)
from easyanimate.training import async_save
from easyanimate.training.manifest import (FORMAT_VERSION, CheckpointError, Checksum, digest_files, read_manifest,
                                           verify)

logger = logging.getLogger(__name__)

RANK_STATES = "rank_states"
MODEL_CONFIG = "transformer/config.json"
# Files written by one rank other than 0: DeepSpeed's ZeRO partition, accelerate's RNG file, our rank state.
OWNER_PATTERNS = (re.compile(r"zero_pp_rank_(\d+)_"), re.compile(r"^random_states_(\d+)\.pkl$"),
                  re.compile(r"^rank(\d+)\.pt$"))
def _owner(relpath: str) -> int:
    name = Path(relpath).name
    for pattern in OWNER_PATTERNS:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return 0


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@contextlib.contextmanager
def _accelerate_sees_true_ranks():
    """accelerate 1.15 under DeepSpeed on CPU believes every rank is process 0 of 1, so every rank would write the
    rank-0 files and ``random_states_0.pkl`` at once. Correct its view (from torch.distributed) while saving."""
    from accelerate.state import AcceleratorState, PartialState
    true = {"process_index": distributed.rank(), "num_processes": distributed.world_size(),
            "local_process_index": distributed.local_rank()}
    states = [PartialState(), AcceleratorState()]
    saved = [{key: getattr(state, key) for key in true} for state in states]
    if all(s == true for s in saved):
        yield
        return
    for state in states:
        for key, value in true.items():
            setattr(state, key, value)
    try:
        yield
    finally:
        for state, values in zip(states, saved):
            for key, value in values.items():
                setattr(state, key, value)


@dataclass
class InFlight:
    """A background save: staged at ``started`` (training stalled ``stall_s``), its tensors copied and written
    by ``writer`` while ``guard`` holds the next optimizer step until the copies are made."""
    step: int
    temp: Path
    deepspeed: bool
    started: float
    stall_s: float
    barrier_s: float
    guard: async_save.CopyGuard
    writer: async_save.BackgroundWrite

    def stall(self) -> float:
        """Seconds training was held: staging, plus an optimizer step waiting for the tensor copies."""
        return self.stall_s + self.guard.waited_s


class Checkpointer:
    """Saves, finds, loads and prunes the checkpoints of one run folder."""

    def __init__(self, output_dir: str | Path, *, total_limit: int | None = None, config_fingerprint: str = "",
                 checksum: Checksum = "sampled-sha256"):
        """``checksum``: "sampled-sha256" (default) hashes files up to 64 MiB whole and bigger ones by size and
        64 spread blocks, keeping saves near disk speed (benchmarks/checkpoint_save.py); "sha256" reads every
        byte, costing about one more pass over the checkpoint at the CPUs' hashing speed."""
        if total_limit is not None and total_limit < 1:
            raise ValueError(f"total_limit must be >= 1 or None, got {total_limit}")
        self.output_dir = Path(output_dir)
        self.total_limit = total_limit
        self.config_fingerprint = config_fingerprint
        self.checksum = checksum
        self._cleanup: threading.Thread | None = None
        self._in_flight: InFlight | None = None
        self._host = async_save.HostBuffers()

    # ---- finding ----

    def checkpoints(self) -> list[Path]:
        """``checkpoint-N`` folders, newest step first (not verified)."""
        return runfolder.checkpoint_dirs(self.output_dir)

    def find_resume(self, resume_from_checkpoint: str | None) -> Path | None:
        """The checkpoint to resume from: ``None``/"" (fresh start), "latest" (the newest that verifies) or a
        path (absolute, or a name under output_dir; it must verify). Collective when distributed."""
        if not resume_from_checkpoint:
            if self.checkpoints() and distributed.is_main():
                logger.warning("%s holds checkpoints but --resume_from_checkpoint is not set: starting from step "
                               "0 (pass --resume_from_checkpoint latest to continue)", self.output_dir)
            return None
        latest = resume_from_checkpoint == "latest"
        candidates = distributed.from_rank0(self.checkpoints() if latest else [self._named(resume_from_checkpoint)])
        skipped = []
        for candidate in candidates:
            problems = verify(candidate)
            if not problems:
                self._check_compatible(candidate)
                if distributed.is_main():
                    logger.info("resuming from %s%s", candidate,
                                f" (skipped {len(skipped)} newer: see warnings above)" if skipped else "")
                return candidate
            if not latest:
                raise CheckpointError(f"--resume_from_checkpoint {candidate} does not verify: "
                                      f"{'; '.join(problems)}")
            skipped.append(candidate)
            if distributed.is_main():
                logger.warning("skipping %s: %s", candidate, "; ".join(problems[:5]) +
                               (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
        if distributed.is_main():
            logger.warning("no complete checkpoint in %s%s: starting from step 0", self.output_dir,
                           f" ({len(skipped)} skipped)" if skipped else "")
        return None

    def _named(self, value: str) -> Path:
        for path in (Path(value), self.output_dir / value):
            if path.is_dir():
                return path
        raise CheckpointError(f"--resume_from_checkpoint {value}: no such folder (looked at {value} and "
                              f"{self.output_dir / value}); pass 'latest' or an existing checkpoint folder")

    def _check_compatible(self, path: Path) -> None:
        self._check_world_size(path)
        manifest = read_manifest(path)
        if self.config_fingerprint and manifest["config_fingerprint"] != self.config_fingerprint \
                and distributed.is_main():
            logger.warning("%s was written with different training options (fingerprint %s, now %s); resuming "
                           "anyway: compare output_dir/config.json with your flags if this was not intended",
                           path, manifest["config_fingerprint"], self.config_fingerprint)

    @staticmethod
    def _check_world_size(path: Path) -> None:
        """A checkpoint of another world size resumes through elastic.py; say so before anything is loaded."""
        saved = read_manifest(path)["world_size"]
        if saved != distributed.world_size() and distributed.is_main():
            logger.warning("%s was written by %d processes and this run has %d: elastic resume (the global batch, "
                           "optimizer state and schedule are kept; see 'what changes when the world size changes' "
                           "in the README)", path, saved, distributed.world_size())

    # ---- saving ----

    def save(self, accelerator, step: int, state: dict) -> Path:
        """Collective: every rank calls it with its own ``state``. Waits for a save in flight, then writes and
        commits this one before it returns output_dir/checkpoint-STEP."""
        self.wait()
        started = time.monotonic()
        temp = self._begin(step)
        self._write_state(accelerator, temp, state)
        marks = {"write": time.monotonic()}
        files = self._sync_and_digest(temp, self._mine)
        marks["fsync+checksum"] = time.monotonic()
        return self._agree_and_commit(step, temp, _uses_deepspeed(accelerator), (files, None), started, marks)

    def save_in_background(self, accelerator, step: int, state: dict) -> Path:
        """Collective: like ``save``, but returns once the state is staged in host memory; a thread writes,
        fsyncs and checksums it while training goes on, and a later ``poll``/``wait`` (every rank, at the same
        step boundary) commits it once every rank's part is durable. Returns the path it will commit to."""
        self.wait()
        started = time.monotonic()
        temp = self._begin(step)
        barrier_s = time.monotonic() - started
        staged = async_save.stage(lambda: self._write_state(accelerator, temp, state), self._host)
        guard = async_save.CopyGuard()
        self._in_flight = InFlight(step, temp, _uses_deepspeed(accelerator), started, time.monotonic() - started,
                                   barrier_s, guard,
                                   async_save.BackgroundWrite(lambda: self._background(temp, staged, guard),
                                                              name=f"checkpoint-{step}-writer"))
        return runfolder.checkpoint_dir(self.output_dir, step)

    def poll(self) -> Path | None:
        """Collective, at every step boundary while a background save is in flight (nothing otherwise): one small
        all-reduce asks whether every rank's part is durable; if so, rank 0 commits. Returns the committed path."""
        if self._in_flight is None or not distributed.all_true(self._in_flight.writer.done()):
            return None
        return self.wait()

    def wait(self) -> Path | None:
        """Collective: block until the background save in flight (if any) is durable on every rank and commit it
        (raises on every rank when a rank failed to write its part)."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return None
        files, error = flight.writer.outcome()
        flight.guard.remove()
        self._host.release()
        marks = {"stall": flight.started + flight.stall_s, "background write+fsync+checksum": time.monotonic()}
        path = self._agree_and_commit(flight.step, flight.temp, flight.deepspeed,
                                      (files, None if error is None else f"{type(error).__name__}: {error}"),
                                      flight.started, marks)
        if distributed.is_main():
            logger.info("checkpoint %s stalled training %.2f s: staging %.2f s (waiting for the other ranks %.2f "
                        "s), the next optimizer step waiting for the tensor copy %.2f s (the copy took %.2f s)", path,
                        flight.stall(), flight.stall_s, flight.barrier_s, flight.guard.waited_s, flight.guard.copy_s)
        return path

    @property
    def in_flight(self) -> InFlight | None:
        """The background save not yet committed, if any."""
        return self._in_flight

    def _begin(self, step: int) -> Path:
        temp = self.output_dir / f"{TEMP_PREFIX}{step}"
        if distributed.rank() == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
        distributed.barrier()
        return temp

    def _write_state(self, accelerator, temp: Path, state: dict) -> None:
        """accelerate's (and DeepSpeed's) files, this rank's state and, on rank 0, the model config."""
        with _accelerate_sees_true_ranks():
            accelerator.save_state(str(temp))
        own = temp / RANK_STATES / f"rank{distributed.rank():05d}.pt"
        own.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, own)
        if distributed.rank() == 0:
            _save_model_config(accelerator, temp)

    def _background(self, temp: Path, staged: async_save.Staged, guard: async_save.CopyGuard) -> dict[str, dict]:
        """The writer thread: copy the tensors to host memory while the next forward/backward runs (the guard
        holds the next optimizer step until then), then write."""
        started = time.perf_counter()
        try:
            async_save.run_copies(staged.copies)
        finally:
            guard.copy_s = time.perf_counter() - started
            guard.copied.set()
        return self._write_staged(temp, staged.writes)

    def _write_staged(self, temp: Path, writes: list[async_save.StagedWrite]) -> dict[str, dict]:
        """The background thread's work: write the staged files, fsync and checksum this rank's."""
        for write in writes:
            write.write()
        return self._sync_and_digest(temp, self._mine)

    @staticmethod
    def _mine(relpath: str) -> bool:
        return _owner(relpath) == distributed.rank()

    def _agree_and_commit(self, step: int, temp: Path, deepspeed: bool, outcome: tuple[dict | None, str | None],
                          started: float, marks: dict[str, float]) -> Path:
        """Every rank hands in its files (or its error); rank 0 commits when none failed; all raise otherwise."""
        outcomes = distributed.gather_lists([outcome])
        failed = [f"rank {rank}: {error}" for rank, (_, error) in enumerate(outcomes) if error is not None]
        final, error = runfolder.checkpoint_dir(self.output_dir, step), None
        if distributed.rank() == 0 and not failed:
            reported = {rel: entry for files, _ in outcomes for rel, entry in files.items()}
            try:
                self._commit(deepspeed, temp, final, step, reported)
                marks["commit"] = time.monotonic()
                self._prune(step)
                elastic.remove_converted(self.output_dir, before_step=step)
                marks["prune"] = time.monotonic()
            except Exception as exc:  # re-raised below on every rank, so none waits forever for rank 0
                error = exc
        if failed:
            raise CheckpointError(f"saving {final} failed ({'; '.join(failed)}); {temp} was not committed")
        if not distributed.all_true(error is None):
            raise CheckpointError(f"saving {final} failed on rank 0: {error}") from error
        if distributed.rank() == 0:
            size = sum(entry["size"] for entry in read_manifest(final)["files"].values())
            phases, last = [], started
            for name, when in marks.items():
                phases.append(f"{name} {when - last:.1f} s")
                last = when
            logger.info("checkpoint %s committed: %.2f GB in %.1f s (%s)", final, size / 1e9,
                        time.monotonic() - started, ", ".join(phases))
        return final

    def _sync_and_digest(self, folder: Path, mine) -> dict[str, dict]:
        paths = [folder / relpath for relpath in _files(folder) if mine(relpath)]
        digests = digest_files(paths, self.checksum, fsync=True)
        return {str(path.relative_to(folder)): {"size": path.stat().st_size, "digest": digests[path]}
                for path in paths}

    def _commit(self, deepspeed: bool, temp: Path, final: Path, step: int, reported: dict) -> None:
        # A file no rank claimed (an unexpected writer) is synced and summed here rather than left out.
        files = {**self._sync_and_digest(temp, lambda rel: rel not in reported), **reported}
        for folder in {(temp / rel).parent for rel in files} | {temp}:
            fsync_dir(folder)
        write_json_atomic(temp / MANIFEST, {
            "format": FORMAT_VERSION, "step": step, "world_size": distributed.world_size(),
            "config_fingerprint": self.config_fingerprint, "checksum": self.checksum, "time": time.time(),
            "deepspeed": deepspeed,
            "model_config": MODEL_CONFIG if MODEL_CONFIG in files else None,
            "versions": _versions(), "files": files})
        runfolder.check_fence(self.output_dir)  # a newer attempt owns the folder: never commit over its work
        replaced = self.output_dir / f"{DELETING_PREFIX}replaced-{step}"
        if final.exists():  # a checkpoint of the same step from an abandoned attempt (or a corrupt one)
            final.rename(replaced)
        temp.rename(final)
        fsync_dir(self.output_dir)
        if replaced.exists():
            shutil.rmtree(replaced)

    # ---- retention ----

    def finish_cleanup(self) -> None:
        """Wait until the checkpoints pruned by the last save are gone from disk."""
        if self._cleanup is not None:
            self._cleanup.join()
            self._cleanup = None

    def _remove_leftovers(self) -> None:
        """Temp folders of saves that were killed, and deletions that were interrupted."""
        self.finish_cleanup()
        for path in self.output_dir.iterdir():
            if path.name.startswith((TEMP_PREFIX, DELETING_PREFIX)):
                logger.warning("removing %s, left by an interrupted save or prune", path)
                shutil.rmtree(path)

    def _prune(self, saved_step: int) -> None:
        """Rank 0, after a commit. Checkpoints newer than the one just saved belong to a timeline this run left
        (it resumed from an older one): they are set aside, not resumed from. Then keep ``total_limit``."""
        kept = []
        for path in self.checkpoints():
            if checkpoint_step(path) > saved_step:
                aside = self.output_dir / f"{ABANDONED_PREFIX}{checkpoint_step(path)}-{int(time.time())}"
                logger.warning("%s is newer than the step this run is at (%d); renamed to %s so that "
                               "'latest' does not jump to it", path, saved_step, aside.name)
                path.rename(aside)
            else:
                kept.append(path)
        doomed = kept[self.total_limit:] if self.total_limit else []
        for path in doomed:
            logger.info("removing %s (--checkpoints_total_limit %d)", path, self.total_limit)
        self._delete(doomed)

    def _delete(self, paths: list[Path]) -> None:
        """Rename first, so a prune killed halfway leaves no half-deleted ``checkpoint-N`` behind; the renamed
        folders are then removed by a background thread (training goes on; the next save and the interpreter's
        exit wait for it, and the next save removes whatever a kill cut short)."""
        doomed = []
        for path in paths:
            doomed.append(self.output_dir / f"{DELETING_PREFIX}{path.name}")
            path.rename(doomed[-1])
        if doomed:
            fsync_dir(self.output_dir)
            self._cleanup = threading.Thread(target=_remove_all, args=(doomed,), name="checkpoint-prune")
            self._cleanup.start()

    # ---- loading ----

    def load(self, accelerator, path: Path) -> dict:
        """Collective: restores model, optimizer, scheduler (accelerate/DeepSpeed) and returns this rank's state.

        On another world size than the one that wrote ``path``, ZeRO partitions are read through their universal
        form (elastic.py) and the returned state is rank 0's, with ``saved_world_size`` added: the saved per-rank
        RNG streams belong to ranks that no longer exist, and the data cursor is global (sampler.py)."""
        started = time.monotonic()
        path = Path(path)
        saved_world = read_manifest(path)["world_size"]
        source, loads_universal = path, contextlib.nullcontext()
        if saved_world != distributed.world_size() and accelerator.state.deepspeed_plugin is not None:
            engine = accelerator.deepspeed_engine_wrapped.engine
            if engine.zero_optimization_stage() > 2:
                raise CheckpointError(f"{path}: resuming ZeRO stage {engine.zero_optimization_stage()} on another "
                                      f"number of processes ({saved_world} -> {distributed.world_size()}) is not "
                                      "supported; use ZeRO-2 or the same number of processes")
            source, loads_universal = elastic.universal_form(path), elastic.engine_loads_universal(engine)
        with _accelerate_sees_true_ranks(), loads_universal:
            accelerator.load_state(str(source))
        if saved_world == distributed.world_size():
            state = torch.load(path / RANK_STATES / f"rank{distributed.rank():05d}.pt", weights_only=False)
        else:
            state = torch.load(path / RANK_STATES / f"rank{0:05d}.pt", weights_only=False)
            state["saved_world_size"] = saved_world
        if distributed.is_main():
            logger.info("loaded %s in %.1f s", path, time.monotonic() - started)
        return state


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path)


def _save_model_config(accelerator, folder: Path) -> None:
    """The trained model's diffusers config, so `easyanimate export` needs nothing but the checkpoint."""
    models = getattr(accelerator, "_models", [])
    model = accelerator.unwrap_model(models[0]) if models else None
    if hasattr(model, "save_config"):
        model.save_config(folder / Path(MODEL_CONFIG).parent)


def _uses_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def _versions() -> dict[str, str]:
    import accelerate
    versions = {"torch": torch.__version__, "accelerate": accelerate.__version__}
    with contextlib.suppress(ImportError):
        import deepspeed
        versions["deepspeed"] = deepspeed.__version__
    return versions
