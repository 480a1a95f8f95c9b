"""The training loop: batch -> loss -> backward -> (every N micro-steps) step -> maybe checkpoint -> log.

Checkpoints happen only at optimizer-step boundaries, so a resume restarts at a micro-step boundary with
the sampler cursor, every RNG stream and the optimizer exactly as they were. On another world size (elastic.py)
the optimizer and the data position are kept and each new rank's random streams are derived from the seed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from easyanimate import distributed
from easyanimate.training import elastic, optim, progress, rng_state, signals
from easyanimate.training.build import Run

logger = logging.getLogger(__name__)


class Cursor:
    """Where training stands: optimizer steps done, epoch, and batches consumed in that epoch."""

    def __init__(self, global_step: int = 0, epoch: int = 0, batches_consumed: int = 0):
        self.global_step, self.epoch, self.batches_consumed = global_step, epoch, batches_consumed

    def state(self, run: Run) -> dict:
        return {"global_step": self.global_step, "epoch": self.epoch, "batches_consumed": self.batches_consumed,
                "sampler": run.data.sampler.state_dict(self.batches_consumed),
                "rng": rng_state.capture({"train": run.generator}),
                "batch": elastic.batch_record(distributed.world_size(), run.cfg.train_batch_size,
                                              run.cfg.gradient_accumulation_steps, run.max_train_steps)}


def resume(run: Run) -> tuple[Cursor, Path | None]:
    """The cursor to continue from (sampler and RNG streams restored) and the checkpoint (None: a fresh start)."""
    path = run.resume_path
    if path is None:
        return Cursor(), None
    state = run.checkpointer.load(run.accelerator, path)
    run.data.sampler.load_state_dict(state["sampler"])
    if "saved_world_size" in state:  # the saved streams belong to the old ranks
        rng_state.derive(run.cfg.seed, state["global_step"], distributed.rank(), distributed.world_size(),
                         {"train": run.generator})
    else:
        rng_state.restore(state["rng"], {"train": run.generator})
    cursor = Cursor(state["global_step"], state["epoch"], run.data.sampler.start)
    logger.info("resumed from %s at step %d (epoch %d, batch %d of %d on this rank)", path, cursor.global_step,
                cursor.epoch, cursor.batches_consumed, len(run.data.sampler))
    return cursor, path


class Ledger:
    """Optional per-rank record of every trained sample id (audits that a resume skips or repeats nothing)."""

    def __init__(self, output_dir: str, enabled: bool, resumed_step: int):
        self.file = None
        if not enabled:
            return
        path = Path(output_dir) / "ledger" / f"rank{distributed.rank()}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Lines written after the checkpoint we resume from belong to work that is being redone; so do those of
        # ranks that this (smaller) world size no longer has.
        gone = [p for p in path.parent.glob("rank*.jsonl") if int(p.stem[4:]) >= distributed.world_size()] \
            if distributed.is_main() else []
        for own in [path] + gone:
            kept = [line for line in own.read_text().splitlines() if json.loads(line)["step"] <= resumed_step] \
                if own.exists() else []
            own.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a")

    def record(self, step: int, epoch: int, sample_ids: torch.Tensor) -> None:
        if self.file:
            self.file.write(json.dumps({"step": step, "epoch": epoch, "ids": sample_ids.tolist()}) + "\n")
            self.file.flush()


class MetricsLog:
    """Rank 0 appends one JSON line per optimizer step to output_dir/logs/metrics.jsonl and feeds trackers."""

    def __init__(self, run: Run):
        self.accelerator = run.accelerator
        self.file = None
        if distributed.is_main():
            path = Path(run.cfg.output_dir) / run.cfg.logging_dir / "metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = path.open("a")

    def log(self, step: int, values: dict) -> None:
        if self.file:
            self.file.write(json.dumps({"step": step, **values}) + "\n")
            self.file.flush()
            if self.accelerator.trackers:
                self.accelerator.log(values, step=step)


def clip_gradients(run: Run, step: int) -> float | None:
    """Non-DeepSpeed clipping with the original's decaying threshold; DeepSpeed clips inside its engine (its
    norm is read back from the engine)."""
    if run.uses_deepspeed:
        norm = run.model.get_global_grad_norm()
        return None if norm is None else float(norm)
    cfg = run.cfg
    params = [p for p in run.trainable if p.grad is not None]
    norm = float(run.accelerator.clip_grad_norm_(params, math.inf))
    threshold = optim.clip_threshold(step, cfg.max_grad_norm, cfg.abnormal_norm_clip_start, cfg.initial_grad_norm_ratio)
    clip = optim.spike_clip(norm, threshold, step, cfg.abnormal_norm_clip_start)
    torch.nn.utils.clip_grads_with_norm_(params, clip, torch.tensor(norm))
    return norm


def micro_step(run: Run, batch: dict, sync: bool) -> torch.Tensor:
    run.accelerator.sync_gradients = sync
    no_sync = contextlib.nullcontext() if sync or run.uses_deepspeed else run.accelerator.no_sync(run.model)
    with no_sync, run.accelerator.autocast():
        loss = run.objective(run.model, batch, run.generator)
    run.accelerator.backward(loss)
    return loss.detach()


def save(run: Run, cursor: Cursor, background: bool = False) -> Path:
    """A checkpoint of this step: committed on return, or (``background``) staged and committed by a later
    ``checkpointer.poll``; the returned path is committed only in the first case."""
    started = time.monotonic()
    if background:
        path = run.checkpointer.save_in_background(run.accelerator, cursor.global_step, cursor.state(run))
        logger.info("staged %s in %.1f s; writing it in the background", path, time.monotonic() - started)
        return path
    path = run.checkpointer.save(run.accelerator, cursor.global_step, cursor.state(run))
    logger.info("saved %s in %.1f s", path, time.monotonic() - started)
    return path


def optimizer_step(run: Run, cursor: Cursor, losses: list[torch.Tensor]) -> dict:
    """Clip, step optimizer, schedule and EMA; returns the step's metrics (loss averaged over ranks)."""
    norm = clip_gradients(run, cursor.global_step)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.step(run.model.parameters())
    cursor.global_step += 1
    loss = distributed.reduce_number(torch.stack(losses).mean().item(), "mean")
    values = {"loss": loss, "lr": run.lr_scheduler.get_last_lr()[0]}
    return values | ({"grad_norm": norm} if norm is not None else {})


def train(run: Run, preemption: signals.PreemptionHandler) -> int:
    """Train to max_train_steps; returns the process exit code (0, or the requeue code after a signal)."""
    cfg = run.cfg
    cursor, last_path = resume(run)
    ledger = Ledger(cfg.output_dir, cfg.sample_ledger, cursor.global_step)
    metrics = MetricsLog(run)
    meter = progress.for_run(run, cursor.global_step)
    step_losses: list[torch.Tensor] = []
    last_saved = cursor.global_step
    logger.info("training steps %d -> %d, %d batches per epoch per rank, %d ranks", cursor.global_step,
                run.max_train_steps, run.steps_per_epoch, distributed.world_size())
    while cursor.global_step < run.max_train_steps:
        run.data.sampler.set_epoch(cursor.epoch)  # keeps a cursor loaded for this epoch
        if cursor.batches_consumed >= len(run.data.sampler):  # resumed after the last batch the new world can deal
            cursor.epoch, cursor.batches_consumed = cursor.epoch + 1, 0
            continue
        batches = meter.timed(iter(run.data.loader))
        for _ in range(cursor.batches_consumed, len(run.data.sampler)):
            batch = next(batches)
            cursor.batches_consumed += 1
            ledger.record(cursor.global_step + 1, cursor.epoch, batch["sample_ids"])
            sync = len(step_losses) + 1 == cfg.gradient_accumulation_steps
            step_losses.append(micro_step(run, batch, sync))
            finished_epoch = end_epoch_if_done(run, cursor)
            if not sync:
                continue
            values = optimizer_step(run, cursor, step_losses)
            metrics.log(cursor.global_step, meter.step(cursor.global_step, values))
            run.checkpointer.poll()  # commits a background save once every rank has it on disk
            step_losses = []
            # Never validate between a signal and its save; a signal during validation ends it early.
            stop = cfg.save_on_signal and preemption.stop_requested()
            if not stop and run.validator.due(cursor.global_step, finished_epoch):
                run.validator.run(run, cursor.global_step, interrupted=lambda: preemption.received is not None)
                stop = cfg.save_on_signal and preemption.stop_requested()
            last = stop or cursor.global_step == run.max_train_steps  # synchronous: the exit waits for it
            if last or cursor.global_step % cfg.checkpointing_steps == 0:
                last_path, last_saved = save(run, cursor, cfg.checkpointing_async and not last), cursor.global_step
            if stop:
                if distributed.is_main():
                    preemption.write_requeue_marker(cfg.output_dir, cursor.global_step, last_path)
                logger.warning("stopping at step %d after a preemption signal; requeue marker written",
                               cursor.global_step)
                return signals.REQUEUE_EXIT_CODE
            if cursor.global_step >= run.max_train_steps:
                break
    final = last_path if last_saved == cursor.global_step and last_path else save(run, cursor)
    save_final_models(run, final)
    return 0


def end_epoch_if_done(run: Run, cursor: Cursor) -> int | None:
    """Move the cursor to the next epoch after its last batch; returns the epoch that just finished."""
    if cursor.batches_consumed < len(run.data.sampler):  # shorter than steps_per_epoch in an elastic epoch
        return None
    cursor.epoch, cursor.batches_consumed = cursor.epoch + 1, 0
    # The sampler moves with the cursor: a checkpoint taken at this step must record the new epoch's order.
    run.data.sampler.set_epoch(cursor.epoch)
    return cursor.epoch - 1


def save_final_models(run: Run, checkpoint: Path) -> None:
    """output_dir/transformer (and transformer_ema): diffusers folders, loadable with from_pretrained; and
    output_dir/pipeline: the base model with that transformer in it."""
    if distributed.is_main():
        from easyanimate.training.export import export, write_run_pipeline
        export(checkpoint, Path(run.cfg.output_dir) / "transformer")
        write_run_pipeline(run.cfg, run.cfg.output_dir)
        if run.ema is not None:
            from easyanimate.training.ema import export_from_checkpoint
            export_from_checkpoint(checkpoint, Path(run.cfg.output_dir) / "transformer_ema")
    distributed.barrier()
