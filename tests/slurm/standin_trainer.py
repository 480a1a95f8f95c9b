"""A stand-in for easyanimate/train_control.py that the SLURM tests launch the same way (accelerate launch,
torchrun agent, gloo workers) but that trains nothing: a few floats change deterministically per step.

It honours the trainer's contract with the SLURM layer: the seed's flags, --resume_from_checkpoint latest,
checkpoint-STEP folders committed by rank 0 after every rank wrote its part, the real PreemptionHandler (signal
-> save at the next step boundary -> requeue.json -> exit 75) and complete.json at the last step.
STANDIN_STEP_S sets the step time; STANDIN_SAVE_S makes every save take that long (a big model's save);
STANDIN_CRASH_AT_STEP makes rank 0 raise at that step; STANDIN_FAIL_SIGNAL_SAVE makes rank 0's signal-triggered save
fail (disk full); STANDIN_HANG_AFTER_SAVE_S makes rank 0 hang that long after committing it, and after completing
(a stuck teardown); STANDIN_IGNORE_SIGNALS=USR2 makes every rank ignore that signal (a warning that never reaches
the trainer). Each rank writes where it ran, the argv it got and the command lines of its launch chain (as ``ps`` shows them to every user of the
node) to output_dir/ranks/rankR.json.
"""

import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from easyanimate import distributed, redact, runfolder
from easyanimate.config import parse_args
from easyanimate.training import signals

logger = logging.getLogger("standin")


def latest_checkpoint(output: Path):
    steps = [int(p.name.split("-")[1]) for p in output.glob("checkpoint-*") if (p / "manifest.json").is_file()]
    return output / f"checkpoint-{max(steps)}" if steps else None


def save(output: Path, step: int, weights: list[float]) -> Path:
    temp, final = output / f".tmp-checkpoint-{step}", output / f"checkpoint-{step}"
    temp.mkdir(parents=True, exist_ok=True)
    (temp / f"rank{distributed.rank()}.json").write_text(json.dumps({"step": step, "weights": weights}))
    time.sleep(float(os.environ.get("STANDIN_SAVE_S", "0")))
    distributed.barrier()
    if distributed.is_main():
        (temp / "manifest.json").write_text(json.dumps({"step": step, "world_size": distributed.world_size()}))
        runfolder.check_fence(output)  # as the real Checkpointer: a newer attempt owns the folder, never commit
        temp.rename(final)
    distributed.barrier()
    return final


def launch_chain() -> list[str]:
    """Command lines of this process and its ancestors up to slurmstepd (or the top), from /proc/PID/cmdline."""
    chain, pid = [], os.getpid()
    while pid > 1:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        chain.append(cmdline)
        if cmdline.startswith("slurmstepd"):
            break
        pid = parent
    return chain


def update(weights: list[float], step: int) -> list[float]:
    value = torch.tensor(weights) * 0.5 + step
    dist.all_reduce(value) if dist.is_initialized() else None
    return (value / distributed.world_size()).tolist()


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    logging.basicConfig(level=logging.INFO, format=f"[standin rank{distributed.rank()}] %(message)s")
    output = Path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    signals.clear_requeue_marker(output)
    lost = [getattr(signal, f"SIG{name}") for name in os.environ.get("STANDIN_IGNORE_SIGNALS", "").split(",") if name]
    handler = signals.PreemptionHandler(tuple(s for s in runfolder.PREEMPTION_SIGNALS if s not in lost)).install()
    for sig in lost:
        signal.signal(sig, signal.SIG_IGN)
    # Like the trainer's config dump: no secret in a file others may read; digests prove the values arrived.
    digests = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in [*os.environ.items(), ("hub_token", cfg.hub_token)]
               if redact.is_secret(k, v) and k != redact.SECRET_ARGS_ENV}
    where = {"rank": distributed.rank(), "world_size": distributed.world_size(), "argv": redact.argv(argv),
             "secret_digests": digests, "launch_chain": launch_chain(),
             "node": os.environ.get("SLURM_NODEID"), "restart": os.environ.get("SLURM_RESTART_COUNT")}
    (output / "ranks").mkdir(exist_ok=True)
    (output / "ranks" / f"rank{distributed.rank()}.json").write_text(json.dumps(where))
    step, weights = 0, [1.0, 2.0, 3.0]
    resume = latest_checkpoint(output) if cfg.resume_from_checkpoint == "latest" else None
    if resume is not None:
        state = json.loads((resume / f"rank{distributed.rank()}.json").read_text())
        step, weights = state["step"], state["weights"]
    logger.info("start at step %d of %d (world %d)", step, cfg.max_train_steps, distributed.world_size())
    step_s = float(os.environ.get("STANDIN_STEP_S", "0.5"))
    crash_at = int(os.environ.get("STANDIN_CRASH_AT_STEP", "-1"))
    while step < cfg.max_train_steps:
        time.sleep(step_s)
        step += 1
        if step == crash_at and distributed.is_main():
            raise RuntimeError(f"stand-in crash at step {step}")
        weights = update(weights, step)
        logger.info("step %d", step)
        if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
            path = save(output, step, weights)
        if handler.stop_requested() and step < cfg.max_train_steps:
            if os.environ.get("STANDIN_FAIL_SIGNAL_SAVE") and distributed.is_main():
                raise OSError(28, "No space left on device (stand-in: the signal-triggered save fails)")
            path = path if step % cfg.checkpointing_steps == 0 else save(output, step, weights)
            if distributed.is_main():
                handler.write_requeue_marker(output, step, path)
            logger.info("saved at step %d after %s; exiting for requeue", step, handler.received)
            if distributed.is_main():  # a teardown that hangs after the save (a stuck NCCL/gloo shutdown)
                time.sleep(float(os.environ.get("STANDIN_HANG_AFTER_SAVE_S", "0")))
            return signals.REQUEUE_EXIT_CODE
    if distributed.is_main():
        (output / "final_weights.json").write_text(json.dumps({"step": step, "weights": weights}))
        signals.write_complete_marker(output, step)
        time.sleep(float(os.environ.get("STANDIN_HANG_AFTER_SAVE_S", "0")))  # and after the last one
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if dist.is_initialized():  # as the trainer's accelerator.end_training(): a live gloo group aborts the exit
        dist.destroy_process_group()
    sys.exit(code)
