"""Resuming a checkpoint on another number of processes: what is kept, what changes, and the converted ZeRO form.

Kept: the global batch (processes x --train_batch_size x gradient accumulation), by changing the gradient
accumulation (N x A / M; refused with the counts that work when it does not divide); hence the learning rate
(--scale_lr multiplies by that same product), the optimizer step count and the LR schedule, whose length is the
one saved in the checkpoint (a length from --num_train_epochs is not recounted on the new world size). Changed:
the tail of each epoch that does not divide among the ranks, and the per-rank random streams (derived from seed,
step, world size and rank: rng_state.derive). The data stream itself: sampler.py.

DeepSpeed ZeRO-2 keeps each rank's slice of the fp32 master weights and Adam moments in its own file. To load them
on another world size, the checkpoint is converted once into DeepSpeed's universal form (one file per parameter
and state, independent of the world size), next to it as ``output_dir/universal-checkpoint-STEP``: written into a
temporary folder and renamed when complete, tagged with the source manifest's checksum, never inside the original.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from easyanimate import distributed
from easyanimate.config import ConfigError
from easyanimate.runfolder import MANIFEST, checkpoint_step, fsync_dir, read_json, write_json_atomic

logger = logging.getLogger(__name__)

UNIVERSAL_PREFIX = "universal-checkpoint-"
UNIVERSAL_TEMP_PREFIX = ".tmp-universal-checkpoint-"
SOURCE = "source.json"
DEEPSPEED_TAG = "pytorch_model"  # the folder accelerate gives DeepSpeed's engine files
# accelerate's per-rank RNG files belong to the old ranks; everything else at the top level is world-size free.
PER_RANK_FILES = ("random_states_", "rank_states")


class ElasticError(ConfigError):
    """This checkpoint cannot be resumed on this number of processes; the message says what would work (the
    trainer exits with code 2 and this message, as for a bad flag)."""


@dataclass(frozen=True)
class ResumePlan:
    """How a run continues from a checkpoint written by ``saved_world`` processes on ``world`` processes."""

    saved_world: int
    world: int
    batch_size: int
    saved_accumulation: int
    accumulation: int
    max_train_steps: int | None  # the saved schedule length (None: the checkpoint predates the record)

    @property
    def changed(self) -> bool:
        return self.saved_world != self.world

    @property
    def global_batch(self) -> int:
        return self.world * self.batch_size * self.accumulation

    def apply(self, cfg):
        """The config with the accumulation that keeps the global batch."""
        return replace(cfg, gradient_accumulation_steps=self.accumulation) if self.changed else cfg

    def describe(self) -> str:
        return (f"world size {self.saved_world} -> {self.world}: global batch kept at {self.global_batch} samples "
                f"({self.saved_world} x {self.batch_size} x {self.saved_accumulation} -> {self.world} x "
                f"{self.batch_size} x {self.accumulation}: gradient accumulation {self.saved_accumulation} -> "
                f"{self.accumulation}); learning rate (--scale_lr included), optimizer state and LR schedule "
                f"continue at the same optimizer step (a length from --num_train_epochs stays the saved "
                f"{self.max_train_steps or 'one'}; --max_train_steps is used as given); the epoch in progress "
                f"continues at its global position, later epochs are {self.world}-rank epochs; random streams are "
                f"derived anew for each of the {self.world} ranks")


def batch_record(world: int, batch_size: int, accumulation: int, max_train_steps: int) -> dict:
    """What a rank state records so that another world size can keep the global batch and the schedule."""
    return {"world_size": world, "train_batch_size": batch_size, "gradient_accumulation_steps": accumulation,
            "max_train_steps": max_train_steps}


def plan(path: Path, cfg, world: int) -> ResumePlan:
    """The plan for resuming ``path`` with ``cfg`` on ``world`` processes; ElasticError when the global batch
    cannot be kept."""
    manifest = read_json(Path(path) / MANIFEST) or {}
    saved_world = int(manifest["world_size"])
    state = torch.load(Path(path) / "rank_states" / "rank00000.pt", weights_only=False)
    record = state.get("batch") or {}  # absent in checkpoints written before elastic resume: assume the flags
    batch = int(record.get("train_batch_size", cfg.train_batch_size))
    saved_acc = int(record.get("gradient_accumulation_steps", cfg.gradient_accumulation_steps))
    max_steps = record.get("max_train_steps")
    if saved_world == world:
        return ResumePlan(world, world, batch, saved_acc, cfg.gradient_accumulation_steps, max_steps)
    if batch != cfg.train_batch_size:
        raise ElasticError(f"{path} was trained with --train_batch_size {batch} per process; this run has "
                           f"{cfg.train_batch_size}. The per-process batch is part of the data order: keep it "
                           f"(pass --train_batch_size {batch}) when changing the number of processes.")
    per_micro_step = saved_world * saved_acc
    if per_micro_step % world:
        fits = [n for n in range(1, per_micro_step + 1) if per_micro_step % n == 0]
        raise ElasticError(
            f"{path} was trained by {saved_world} processes x {saved_acc} accumulation steps x {batch} samples "
            f"= a global batch of {per_micro_step * batch}; {world} processes cannot keep it (gradient "
            f"accumulation {per_micro_step} / {world} is not whole). Resume on one of {fits} processes, or start a "
            "new output_dir to train with another global batch.")
    accumulation = per_micro_step // world
    if cfg.gradient_accumulation_steps not in (saved_acc, accumulation) and distributed.is_main():
        logger.warning("--gradient_accumulation_steps %d is overridden by %d: a resume on another world size "
                       "keeps the checkpoint's global batch", cfg.gradient_accumulation_steps, accumulation)
    return ResumePlan(saved_world, world, batch, saved_acc, accumulation, max_steps)


# ---- ZeRO partitions on another world size --------------------------------------------------------------------

def universal_dir(checkpoint: Path) -> Path:
    return Path(checkpoint).parent / f"{UNIVERSAL_PREFIX}{checkpoint_step(checkpoint)}"


def _source_tag(checkpoint: Path) -> str:
    return hashlib.sha256((Path(checkpoint) / MANIFEST).read_bytes()).hexdigest()


def universal_form(checkpoint: Path) -> Path:
    """Collective: the universal form of a DeepSpeed checkpoint, converted by rank 0 on first use (or reused when
    it was converted from this very checkpoint). The original folder is only read."""
    checkpoint = Path(checkpoint)
    target, error = universal_dir(checkpoint), None
    if distributed.is_main():
        try:
            _convert_once(checkpoint, target)
        except Exception as exc:  # re-raised on every rank below, so none waits for rank 0 forever
            error = exc
    if not distributed.all_true(error is None):
        raise ElasticError(f"converting {checkpoint} to DeepSpeed's universal form failed on rank 0: {error}") \
            from error
    return target


def _convert_once(checkpoint: Path, target: Path) -> None:
    tag = _source_tag(checkpoint)
    if target.is_dir() and (read_json(target / SOURCE) or {}).get("manifest_sha256") == tag:
        logger.info("using %s, converted earlier from %s", target, checkpoint)
        return
    output_dir = checkpoint.parent
    for stale in output_dir.glob(f"{UNIVERSAL_TEMP_PREFIX}*"):
        shutil.rmtree(stale)  # a conversion that was killed
    temp = output_dir / f"{UNIVERSAL_TEMP_PREFIX}{checkpoint_step(checkpoint)}"
    temp.mkdir()
    _to_universal(checkpoint / DEEPSPEED_TAG, temp / DEEPSPEED_TAG)
    for item in checkpoint.iterdir():  # scheduler, EMA, model config...: what accelerate loads besides the engine
        if item.name in (DEEPSPEED_TAG, MANIFEST) or item.name.startswith(PER_RANK_FILES):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, temp / item.name)
    (temp / DEEPSPEED_TAG / "latest_universal").write_text(DEEPSPEED_TAG)
    for path in sorted(temp.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        else:
            fsync_dir(path)
    write_json_atomic(temp / SOURCE, {"checkpoint": checkpoint.name, "manifest_sha256": tag})
    fsync_dir(temp)
    if target.exists():  # converted from an older checkpoint of the same step: not ours
        shutil.rmtree(target)
    temp.rename(target)
    fsync_dir(output_dir)
    _remove_orphans(output_dir)
    logger.info("converted %s to DeepSpeed's universal form in %s", checkpoint, target)


def _to_universal(engine_dir: Path, out: Path) -> None:
    from deepspeed.checkpoint import ds_to_universal
    args = argparse.Namespace(input_folder=str(engine_dir), output_folder=str(out), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)  # accelerate's engine does not record it
    # Its prints and progress bars are not our log (an error still raises).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ds_to_universal.main(args)


def remove_converted(output_dir: str | Path, before_step: int) -> None:
    """Rank 0, after a commit (of a synchronous or a background save): universal forms of older checkpoints are
    not needed by the next resume (a resume of an older checkpoint on another world size converts it again)."""
    for converted in Path(output_dir).glob(f"{UNIVERSAL_PREFIX}*"):
        step = converted.name[len(UNIVERSAL_PREFIX):]
        if step.isdigit() and int(step) < before_step:
            logger.info("removing %s: checkpoint-%d supersedes it", converted, before_step)
            shutil.rmtree(converted)


def _remove_orphans(output_dir: Path) -> None:
    """Universal forms whose checkpoint was pruned (or replaced) are of no further use."""
    for converted in output_dir.glob(f"{UNIVERSAL_PREFIX}*"):
        source = read_json(converted / SOURCE) or {}
        original = output_dir / str(source.get("checkpoint", ""))
        if not (original / MANIFEST).is_file() or _source_tag(original) != source.get("manifest_sha256"):
            logger.info("removing %s: its checkpoint is gone", converted)
            shutil.rmtree(converted)


@contextlib.contextmanager
def engine_loads_universal(engine):
    """DeepSpeed reads the universal form when its config says so; say so for this one load only."""
    config = engine._config
    before = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        yield
    finally:
        config.load_universal_checkpoint = before

