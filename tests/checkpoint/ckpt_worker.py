"""A tiny training program for the process-level checkpoint tests, launched with `accelerate launch`.

It trains a diffusers transformer folder on a per-rank random objective (no forward pass: every weight gets a
data-dependent gradient) with the real Checkpointer, PreemptionHandler and rng_state, and can be told to die
(SIGKILL) in the middle of a save or to receive SIGUSR1 on one rank only. Resumed on another number of
processes it derives its random streams as the trainer does, and ``--resave_to`` saves the state it resumed
with into another folder (to compare it with the checkpoint it came from).
Rank 0 writes the final weights' sha256 to ``output_dir/result.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import EasyAnimateTransformer3DModel

from easyanimate import distributed
from easyanimate.logs import setup_logging
from easyanimate.training import rng_state, signals
from easyanimate.training.checkpoint import Checkpointer

logger = logging.getLogger("ckpt_worker")


class DiesWhileSaving(Checkpointer):
    """Rank 1 is SIGKILLed after writing its files for step ``die_at`` and before the save commits; or, for a
    background save of step ``die_writing_at``, on the writer thread after its first file. ``slow_write``
    seconds delay every background write (so that training runs on while it is in flight)."""

    def __init__(self, *args, die_at: int | None, die_writing_at: int | None, slow_write: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.die_at, self.die_writing_at, self.slow_write, self.saving = die_at, die_writing_at, slow_write, None

    def save(self, accelerator, step, state):
        self.saving = step
        return super().save(accelerator, step, state)

    def _sync_and_digest(self, folder, mine):
        if self.die_at is not None and self.saving == self.die_at and distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._sync_and_digest(folder, mine)

    def _write_staged(self, temp, writes):
        assert threading.current_thread() is not threading.main_thread()
        time.sleep(self.slow_write)
        if int(temp.name.rsplit("-", 1)[1]) == self.die_writing_at and distributed.rank() == 1:
            writes[0].write()
            logger.warning("rank 1 wrote %s and is killed while writing the rest", writes[0].path)
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._write_staged(temp, writes)


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--save_every", type=int, default=2)
    parser.add_argument("--total_limit", type=int, default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--die_while_saving", type=int, default=None)
    parser.add_argument("--signal_rank1_at", type=int, default=None)
    parser.add_argument("--async_saves", action="store_true", help="periodic saves in the background")
    parser.add_argument("--die_while_writing", type=int, default=None)
    parser.add_argument("--slow_write", type=float, default=0, help="seconds each background write waits")
    parser.add_argument("--step_seconds", type=float, default=0, help="sleep per step (to be signalled)")
    parser.add_argument("--transformer", required=True, help="diffusers transformer folder to train")
    parser.add_argument("--resave_to", default=None, help="save the resumed state at once into this folder")
    return parser.parse_args(argv)


def weights_sha(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return sum(((p * x.mean()) - y.mean()).pow(2).mean() for p in model.parameters())


def main(argv) -> int:
    args = parse(argv)
    accelerator = Accelerator()
    setup_logging()
    rank = distributed.rank()
    torch.manual_seed(0)
    model = EasyAnimateTransformer3DModel.from_pretrained(args.transformer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    generator = torch.Generator().manual_seed(100 + rank)
    preemption = signals.PreemptionHandler().install()
    checkpointer = DiesWhileSaving(args.output_dir, total_limit=args.total_limit, config_fingerprint="worker",
                                   die_at=args.die_while_saving, die_writing_at=args.die_while_writing,
                                   slow_write=args.slow_write)
    step = 0
    resume_from = checkpointer.find_resume(args.resume)
    if resume_from is not None:
        state = checkpointer.load(accelerator, resume_from)
        step = state["global_step"]
        if "saved_world_size" in state:
            rng_state.derive(0, step, rank, distributed.world_size(), {"data": generator})
        else:
            rng_state.restore(state["rng"], {"data": generator})
        if args.resave_to:
            Checkpointer(args.resave_to).save(accelerator, step, {"global_step": step,
                                                                  "rng": rng_state.capture({"data": generator})})
    while step < args.steps:
        x = torch.randn(8, 16, generator=generator)
        y = torch.randn(8, 4, generator=generator) + torch.randn(8, 4) * 0.01  # the global stream too
        accelerator.backward(loss(model, x, y))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        time.sleep(args.step_seconds)
        logger.info("trained step %d (background save of step %s in flight)", step,
                    checkpointer.in_flight and checkpointer.in_flight.step)
        checkpointer.poll()
        if step == args.signal_rank1_at and rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        stop = preemption.stop_requested()
        last = stop or step == args.steps
        if last or step % args.save_every == 0:
            save = checkpointer.save_in_background if args.async_saves and not last else checkpointer.save
            path = save(accelerator, step, {"global_step": step, "rng": rng_state.capture({"data": generator})})
            if stop:
                if distributed.is_main():
                    preemption.write_requeue_marker(args.output_dir, step, path)
                return signals.REQUEUE_EXIT_CODE
    digest = weights_sha(accelerator.unwrap_model(model))
    everyone = [None] * distributed.world_size()
    if distributed.is_initialized():
        torch.distributed.all_gather_object(everyone, digest)
    else:  # one process without --multi_gpu: accelerate starts no process group
        everyone = [digest]
    if distributed.is_main():
        Path(args.output_dir, "result.json").write_text(json.dumps({"step": step, "weights": everyone}))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if distributed.is_initialized():
        torch.distributed.destroy_process_group()  # exiting with a live gloo group aborts the process
    sys.exit(code)
