"""Checkpoint save time next to a raw write+fsync of the same bytes, the stall of a background save, and resume.

Builds an MLP of about --params parameters with AdamW under accelerate (one process) and takes one step, so a
checkpoint holds weights plus both Adam moments (~12 bytes per parameter, as ZeRO-2's fp32 partitions do).
For each model size and checksum mode it then times, alternately and --repeats times each (best kept):
- raw: the checkpoint's exact file sizes written from memory and fsynced, in a folder beside output_dir;
- save: Checkpointer.save (accelerate save_state, rank state, fsync, checksums, manifest, atomic rename);
and reports GB/s and raw_time/save_time (1.0 = the save runs at the disk's speed). Then, with the default
checksum, a background save (--checkpointing_async): the stall (time training is blocked: staging the save,
the next optimizer step waiting for the tensor copy if the forward/backward was shorter, the polls at each later
step until the commit), the tensor copy alone (made on the writer thread), the time until the commit while
training steps run, and how much slower those steps were (the writer thread shares the CPUs: on a 2-core
machine that contention is part of the picture). Ratios: stall/save (target <= 0.15) and copy/save.
Last, resume to the first step: find_resume("latest") (re-reads and checks every checksum), load, one step.

    python benchmarks/checkpoint_save.py                         # 25M parameters (~300 MB), ~1 minute
    python benchmarks/checkpoint_save.py --params 1e8 2.5e8 --checksums sampled-sha256 --json out.json
    python benchmarks/checkpoint_save.py --params 1e9 --dir /scratch/$USER/ckpt-bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402

from easyanimate.runfolder import MANIFEST, fsync_dir  # noqa: E402
from easyanimate.training.checkpoint import Checkpointer  # noqa: E402
from easyanimate.training.manifest import read_manifest  # noqa: E402

LAYERS = 4
CHUNK = 64 << 20


def build(params: float):
    """A fresh accelerator, an MLP of ~``params`` parameters and its AdamW, prepared."""
    AcceleratorState._reset_state(True)
    width = int(math.sqrt(params / LAYERS))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(LAYERS)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer, width


def train_step(model, optimizer, width: int) -> None:
    model(torch.randn(4, width)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def raw_write(folder: Path, sizes: list[int]) -> float:
    """Seconds to write and fsync files of ``sizes`` bytes (plus their folder), from one reused buffer."""
    buffer = memoryview(os.urandom(CHUNK))
    folder.mkdir(parents=True)
    start = time.perf_counter()
    for i, size in enumerate(sizes):
        with open(folder / f"file{i}", "wb") as out:
            for offset in range(0, size, CHUNK):
                out.write(buffer[: min(CHUNK, size - offset)])
            out.flush()
            os.fsync(out.fileno())
    fsync_dir(folder)
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder)
    return elapsed


def timed_save(checkpointer: Checkpointer, accelerator, step: int) -> float:
    """Until save() returns; the pruned checkpoint's deletion then finishes untimed, as it overlaps training."""
    start = time.perf_counter()
    checkpointer.save(accelerator, step, {"global_step": step})
    elapsed = time.perf_counter() - start
    checkpointer.finish_cleanup()
    return elapsed


def checkpoint_sizes(path: Path) -> list[int]:
    return [entry["size"] for entry in read_manifest(path)["files"].values()] + \
        [(path / MANIFEST).stat().st_size]


def run(args) -> dict:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    results = {"dir": str(root), "models": []}
    for params in args.params:
        results["models"].append(measure(root / f"{params:.3g}", params, args))
    last = args.params[-1]
    results["resume"] = time_resume(root / f"{last:.3g}" / f"run-{args.checksums[-1]}", last)
    if not args.dir:
        shutil.rmtree(root)
    return results


def measure(root: Path, params: float, args) -> dict:
    accelerator, model, optimizer, width = build(params)
    train_step(model, optimizer, width)
    results = {"params": sum(p.numel() for p in model.parameters()), "modes": {}}
    step = 0
    for mode in args.checksums:
        checkpointer = Checkpointer(root / f"run-{mode}", total_limit=1, checksum=mode)
        step += 1
        timed_save(checkpointer, accelerator, step)  # warm-up; also gives the file sizes to mirror
        sizes = checkpoint_sizes(checkpointer.checkpoints()[0])
        raw, save = [], []
        for _ in range(args.repeats):
            raw.append(raw_write(root / "raw", sizes))
            step += 1
            save.append(timed_save(checkpointer, accelerator, step))
        total = sum(sizes)
        results["modes"][mode] = {"bytes": total, "files": len(sizes), "raw_s": min(raw), "save_s": min(save),
                                  "raw_gb_s": total / min(raw) / 1e9, "save_gb_s": total / min(save) / 1e9,
                                  "ratio": min(raw) / min(save)}
    checkpointer = Checkpointer(root / "run-background", total_limit=1)
    step_s = min(timed_steps(model, optimizer, width, 3))
    # The first background save allocates the staging memory (page faults); later ones reuse it.
    first, *background = [timed_background_save(checkpointer, accelerator, model, optimizer, width, step + i + 1)
                          for i in range(1 + args.repeats)]
    best = min(background, key=lambda r: r["stall_s"])
    best["first_stall_s"] = first["stall_s"]
    sync_s = results["modes"].get("sampled-sha256", next(iter(results["modes"].values())))["save_s"]
    results["background"] = best | {"step_s": step_s, "step_slowdown": best["step_s_during"] / step_s,
                                    "stall_over_save": best["stall_s"] / sync_s,
                                    "copy_over_save": best["copy_s"] / sync_s}
    return results


def timed_steps(model, optimizer, width: int, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        train_step(model, optimizer, width)
        times.append(time.perf_counter() - start)
    return times


def timed_background_save(checkpointer: Checkpointer, accelerator, model, optimizer, width: int, step: int) -> dict:
    """A background save while training goes on: every second spent inside the checkpointer is stall."""
    start = time.perf_counter()
    checkpointer.save_in_background(accelerator, step, {"global_step": step})
    stall = time.perf_counter() - start
    flight = checkpointer.in_flight
    steps, committed = [], None
    while committed is None:
        steps += timed_steps(model, optimizer, width, 1)
        polled = time.perf_counter()
        committed = checkpointer.poll()
        stall += time.perf_counter() - polled
    until_commit = time.perf_counter() - start
    checkpointer.finish_cleanup()
    held = flight.guard.waited_s  # the first step after the save waited for the tensor copy: stall, not step
    return {"stall_s": stall + held, "stage_s": flight.stall_s, "step_held_s": held, "copy_s": flight.guard.copy_s,
            "commit_after_s": until_commit, "steps_during": len(steps),
            "step_s_during": (sum(steps) - held) / len(steps)}


def time_resume(run_dir: Path, params: float) -> dict:
    """A new process's view: fresh model, then find (verify), load, first step; each part timed."""
    start = time.perf_counter()
    accelerator, model, optimizer, width = build(params)
    built = time.perf_counter()
    checkpointer = Checkpointer(run_dir)
    path = checkpointer.find_resume("latest")
    found = time.perf_counter()
    checkpointer.load(accelerator, path)
    loaded = time.perf_counter()
    train_step(model, optimizer, width)
    stepped = time.perf_counter()
    return {"build_s": built - start, "find_and_verify_s": found - built, "load_s": loaded - found,
            "first_step_s": stepped - loaded, "resume_to_first_step_s": stepped - built}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, nargs="+", default=[25e6],
                        help="Model parameters (the MLP is sized to it); several sizes run one after another.")
    parser.add_argument("--dir", default=None, help="Folder on the disk to measure (default: a temp folder).")
    parser.add_argument("--repeats", type=int, default=2, help="Timed saves (and raw writes) per mode.")
    parser.add_argument("--checksums", nargs="+", default=["sha256", "sampled-sha256"],
                        choices=["sha256", "sampled-sha256"], help="Checkpointer checksum modes to time.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    results = run(args)
    print(f"disk folder {results['dir']}, {os.cpu_count()} CPUs")
    print(f"{'params':>7} {'checksum':<16} {'GB':>7} {'files':>5} {'raw s':>7} {'save s':>7} {'raw GB/s':>9} "
          f"{'save GB/s':>10} {'save/raw bandwidth':>19}")
    for model in results["models"]:
        for mode, r in model["modes"].items():
            print(f"{model['params'] / 1e6:>6.0f}M {mode:<16} {r['bytes'] / 1e9:>7.3f} {r['files']:>5} "
                  f"{r['raw_s']:>7.2f} {r['save_s']:>7.2f} {r['raw_gb_s']:>9.2f} {r['save_gb_s']:>10.2f} "
                  f"{r['ratio']:>19.2f}")
    print(f"{'params':>7} {'stall s':>8} {'copy s':>7} {'stall/save':>10} {'copy/save':>9} {'1st stall s':>11} "
          f"{'commit after s':>14} {'steps':>5} {'step s':>7} {'step s during':>13} {'slowdown':>8}")
    for model in results["models"]:
        b = model["background"]
        print(f"{model['params'] / 1e6:>6.0f}M {b['stall_s']:>8.2f} {b['copy_s']:>7.2f} {b['stall_over_save']:>10.3f} "
              f"{b['copy_over_save']:>9.3f} {b['first_stall_s']:>11.2f} {b['commit_after_s']:>14.2f} "
              f"{b['steps_during']:>5} {b['step_s']:>7.2f} {b['step_s_during']:>13.2f} {b['step_slowdown']:>8.2f}")
    resume = results["resume"]
    print("resume: " + ", ".join(f"{k} {v:.2f}" for k, v in resume.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
