"""The GPU check's parts and the runner that gives each its own process, time limit, report line and JSON entry.

    python -m benchmarks.gpu.check [--dry-run] [--out DIR] [--work DIR] [--only PART ...]

Parts, in order: environment (versions, GPU, dense bf16 peak), prepare (model and data made on the spot),
seed_run (the seed's V5.1 DeepSpeed job through ``slurm/submit.py --local``, instrumented), throughput (samples/s,
tokens/s, MFU, loop overhead against a pure forward+backward, peak memory per phase), loader (the trainer's
DataLoader with 8 workers against the trainer's step rate), resume_bitwise (USR2 mid-run, committed save, resume,
final weights bitwise equal to an uninterrupted run, deterministic kernels). ``--dry-run``: the same parts at
tiny sizes on the CPU (gloo, DeepSpeed with DS_ACCELERATOR=cpu), in about two minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "configs" / "jobs" / "v5.1_control_deepspeed.yaml"
ENTRY = "benchmarks/gpu/instrumented_trainer.py"
PARTS = ("environment", "prepare", "seed_run", "throughput", "loader", "resume_bitwise")
NEEDS = {"seed_run": ("prepare",), "throughput": ("seed_run",), "loader": ("prepare", "seed_run"),
         "resume_bitwise": ("prepare",)}
OVERHEAD_TARGET = 0.03


@dataclasses.dataclass(frozen=True)
class Settings:
    tiny: bool
    gpus: int                      # the job's --gpus-per-node (0: CPU, gloo)
    mixed_precision: str
    timing_layers: int
    bitwise_layers: int
    seed_steps: int
    warmup_steps: int              # first steps left out of the timing
    bitwise_steps: int
    signal_after_steps: int
    loader_workers: int
    loader_batches: int
    fwdbwd_repeats: int
    limits: dict                   # part -> seconds
    train: tuple = ()              # flag overrides on top of the job file (sizes; never the method)


# Limits sum to 570 s: with the wheel install the whole check stays inside one 600 s device call even when every
# part runs to its limit (expected: about 5 minutes on an H200).
GPU = Settings(tiny=False, gpus=1, mixed_precision="bf16", timing_layers=4, bitwise_layers=1, seed_steps=12,
               warmup_steps=3, bitwise_steps=5, signal_after_steps=2, loader_workers=8, loader_batches=40,
               fwdbwd_repeats=5,
               limits={"environment": 30, "prepare": 80, "seed_run": 190, "throughput": 60, "loader": 40,
                       "resume_bitwise": 170})
DRY = Settings(tiny=True, gpus=0, mixed_precision="no", timing_layers=2, bitwise_layers=2, seed_steps=3,
               warmup_steps=1, bitwise_steps=3, signal_after_steps=1, loader_workers=2, loader_batches=6,
               fwdbwd_repeats=2,
               # Generous: on a shared 2-core machine one trainer launch can take minutes of imports alone.
               limits={"environment": 120, "prepare": 180, "seed_run": 600, "throughput": 180, "loader": 180,
                       "resume_bitwise": 900},
               train=("--image_sample_size=64", "--video_sample_size=32", "--token_sample_size=32",
                      "--video_sample_n_frames=9", "--video_sample_stride=1", "--dataloader_num_workers=0",
                      "--mixed_precision=no"))


# ---- shared helpers ----

def data_flags(work: Path, settings: Settings, model: Path, output: Path, steps: int) -> list[str]:
    data = work / "data"
    return [*settings.train, f"--pretrained_model_name_or_path={model}", f"--train_data_dir={data}",
            f"--train_data_meta={data / 'metadata_control.json'}", f"--output_dir={output}",
            f"--max_train_steps={steps}", "--checkpointing_steps=100000", "--report_to=none"]


def spec_for(settings: Settings, work: Path, name: str, flags: list[str]):
    from slurm import jobs
    options = {"gpus_per_node": settings.gpus, "container": "none", "job_dir": str(work / f"{name}-job"),
               "entry": ENTRY, "mixed_precision": settings.mixed_precision, "time": "00:15:00"}
    return jobs.build_spec(options, job_file=str(JOB), extra=flags, cwd=REPO)


def python_path() -> str:
    """This repository first, then whatever the caller had (gpu_check.sh's carried wheels)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _count_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gib(value: float | None) -> float | None:
    return None if value is None else round(value / 2**30, 2)


# ---- parts: each returns {"status": PASS|FAIL|INFO, "line": str, ...numbers} ----

def part_environment(settings: Settings, work: Path, earlier: dict) -> dict:
    import importlib.metadata as metadata

    import torch
    import torch.distributed as dist

    from benchmarks.gpu.measure import dense_bf16_peak_tflops
    versions = {}
    for name in ("torch", "accelerate", "transformers", "diffusers", "deepspeed", "decord", "av", "submitit"):
        try:
            versions[name] = metadata.version(name)
            __import__(name)
        except Exception as error:  # a missing or broken package fails this part, with its error
            versions[name] = f"MISSING: {type(error).__name__}: {error}"
    out = {"python": sys.version.split()[0], "versions": versions, "cuda": torch.cuda.is_available(),
           "nccl": dist.is_nccl_available()}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        measured = 10 * 2 * 8192**3 / (time.perf_counter() - started) / 1e12
        out |= {"device": name, "memory_gib": gib(torch.cuda.get_device_properties(0).total_memory),
                "peak_bf16_tflops": dense_bf16_peak_tflops(name), "matmul_bf16_tflops": round(measured, 1)}
    missing = [k for k, v in versions.items() if v.startswith("MISSING")]
    gpu_ok = settings.tiny or (out["cuda"] and out["nccl"] and out.get("peak_bf16_tflops"))
    out["status"] = "PASS" if not missing and gpu_ok else "FAIL"
    out["line"] = (f"{out.get('device', 'CPU')}, torch {versions['torch']}, peak {out.get('peak_bf16_tflops')} "
                   f"TFLOP/s (8192^3 matmul {out.get('matmul_bf16_tflops')})"
                   + (f"; missing: {', '.join(missing)}" if missing else ""))
    return out


def part_prepare(settings: Settings, work: Path, earlier: dict) -> dict:
    import torch

    from benchmarks.gpu.fixtures import make_data, make_model, transformer_parameters
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    params = {}
    for name, layers in (("timing", settings.timing_layers), ("bitwise", settings.bitwise_layers)):
        folder = make_model(work / f"model-{name}", layers=layers, tiny=settings.tiny, device=device)
        params[name] = transformer_parameters(folder)
    meta = make_data(work / "data", tiny=settings.tiny, copies=1 if settings.tiny else 4)
    rows = len(json.loads(meta.read_text()))
    return {"status": "PASS", "transformer_parameters": params, "rows": rows,
            "seconds": round(time.perf_counter() - started, 1),
            "line": f"transformers of {params['timing'] / 1e9:.2f}B / {params['bitwise'] / 1e9:.2f}B parameters "
                    f"(timing / bitwise), {rows} metadata rows"}


def part_seed_run(settings: Settings, work: Path, earlier: dict) -> dict:
    output, log = work / "seed-out", work / "seed-forwards.jsonl"
    log.unlink(missing_ok=True)
    Path(f"{log}.phases").unlink(missing_ok=True)
    flags = data_flags(work, settings, work / "model-timing", output, settings.seed_steps)
    command = [sys.executable, str(REPO / "slurm" / "submit.py"), "--local", "--job", str(JOB),
               "--gpus-per-node", str(settings.gpus), "--container", "none", "--job-dir", str(work / "seed-job"),
               "--entry", ENTRY, "--mixed-precision", settings.mixed_precision, "--time", "00:15:00",
               "--env", f"EASYANIMATE_GPU_CHECK_LOG={log}", "--", *flags]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    calls = lines(log)
    out = {"exit_code": done.returncode, "seconds": round(time.perf_counter() - started, 1), "steps": len(calls),
           "complete": (output / "complete.json").exists(), "forwards_log": str(log), "command": command}
    if done.returncode != 0 or not out["complete"] or len(calls) < settings.seed_steps:
        tail = (done.stdout + done.stderr)[-3000:]
        return out | {"status": "FAIL", "line": f"exit {done.returncode}, {len(calls)} steps", "tail": tail,
                      "job_logs": str(work / "seed-job" / "logs")}
    step_s = [b["time"] - a["time"] for a, b in zip(calls, calls[1:])][settings.warmup_steps:]
    out |= {"status": "PASS", "step_seconds": step_s, "median_step_s": statistics.median(step_s),
            "resident_gib": gib(max(c.get("allocated", 0) for c in calls) or None),
            "train_step_peak_gib": gib(max(c.get("peak", 0) for c in calls[1:]) or None)}
    out["line"] = (f"{settings.seed_steps} steps through submit.py --local in {out['seconds']} s, median step "
                   f"{out['median_step_s']:.3f} s, peak {out['train_step_peak_gib']} GiB")
    for checkpoint in output.glob("checkpoint-*"):  # the disk is small; only the timings are needed from here
        subprocess.run(["rm", "-rf", str(checkpoint)])
    return out


def part_throughput(settings: Settings, work: Path, earlier: dict) -> dict:
    import torch

    from benchmarks.gpu import measure
    seed = earlier["seed_run"]
    calls = lines(Path(seed["forwards_log"]))
    timed = calls[settings.warmup_steps:]
    call = measure.most_common_call(timed)
    key = measure.signature(call)
    # Step k's time is forward k+1's start minus forward k's start: time the steps whose batch had this shape.
    same = [b["time"] - a["time"] for a, b in zip(calls, calls[1:])
            if calls.index(a) >= settings.warmup_steps and measure.signature(a) == key]
    step_s = statistics.median(same) if same else seed["median_step_s"]
    model = work / "model-timing"
    flops = measure.model_flops(model, call)
    cuda = torch.cuda.is_available()
    pure = measure.forward_backward(model, call, device="cuda" if cuda else "cpu",
                                    dtype=torch.bfloat16 if cuda else torch.float32, checkpointing=True,
                                    repeats=settings.fwdbwd_repeats)
    shape = call["kwargs"].get("hidden_states", call["args"][0] if call["args"] else {}).get("shape")
    tokens = shape[0] * shape[2] * (shape[3] // 2) * (shape[4] // 2) if shape and len(shape) == 5 else None
    samples = shape[0] if shape else 1
    peak = earlier.get("environment", {}).get("peak_bf16_tflops")
    # Loop overhead: the share of a step outside the compute it must do (encode, forward, backward, optimizer),
    # as timed inside the trainer; the transformer's share is the pure forward+backward of the same shapes.
    starts = [c["time"] for c in calls]
    shares = measure.loop_overheads(starts, lines(Path(seed["forwards_log"] + ".phases")))
    overhead = statistics.median(shares[settings.warmup_steps:] or shares) if shares else None
    out = {"latent_shape": shape, "steps_with_shape": len(same), "step_s": step_s,
           "samples_per_s": samples / step_s, "tokens_per_s": tokens / step_s if tokens else None,
           "model_tflops_per_step": flops / 1e12, "achieved_tflops": flops / step_s / 1e12,
           "mfu": flops / step_s / (peak * 1e12) if peak else None, "pure_fwd_bwd_s": pure["seconds"],
           "transformer_share": pure["seconds"] / step_s, "loop_overheads": shares,
           "loop_overhead": overhead, "overhead_target": OVERHEAD_TARGET,
           "fwd_bwd_peak_gib": {k: gib(v) for k, v in (pure["peak_bytes"] or {}).items()} or None,
           "train_step_peak_gib": seed.get("train_step_peak_gib"), "resident_gib": seed.get("resident_gib")}
    if overhead is None:
        out["status"] = "FAIL"
    else:
        out["status"] = "INFO" if settings.tiny else ("PASS" if overhead <= OVERHEAD_TARGET else "FAIL")
    mfu = f"{out['mfu']:.1%}" if out["mfu"] is not None else "n/a (no GPU peak)"
    loop = f"{overhead:.1%}" if overhead is not None else "not measured (no phase log)"
    out["line"] = (f"{out['samples_per_s']:.2f} samples/s, {out['tokens_per_s'] or 0:.0f} tokens/s, MFU {mfu}, "
                   f"loop overhead {loop} (target {OVERHEAD_TARGET:.0%}); transformer fwd+bwd "
                   f"{pure['seconds']:.3f} s of the {step_s:.3f} s step")
    return out


def part_loader(settings: Settings, work: Path, earlier: dict) -> dict:
    from benchmarks.gpu.measure import loader_rate
    flags = data_flags(work, settings, work / "model-timing", work / "loader-out", settings.seed_steps)
    train_args = spec_for(settings, work, "loader", flags).train_args
    rate = loader_rate(train_args, workers=settings.loader_workers, batches=settings.loader_batches)
    steps_per_s = 1 / earlier["seed_run"]["median_step_s"]
    ratio = rate["batches_per_s"] / steps_per_s
    return rate | {"trainer_steps_per_s": steps_per_s, "ratio": ratio, "workers": settings.loader_workers,
                   "status": "PASS" if ratio >= 1.0 else "FAIL",
                   "line": f"{rate['batches_per_s']:.2f} batches/s with {settings.loader_workers} workers = "
                           f"{ratio:.2f} x the trainer's {steps_per_s:.2f} steps/s"}


def _launch(settings: Settings, work: Path, name: str, output: Path, steps: int) -> subprocess.Popen:
    from slurm import command
    from slurm.command import NodeContext
    spec = spec_for(settings, work, name, data_flags(work, settings, work / "model-bitwise", output, steps))
    node = NodeContext(job_id="0", num_nodes=1, node_rank=0, master_addr="127.0.0.1",
                       master_port=str(free_port()))
    env = dict(os.environ, **command.training_env(spec), PYTHONPATH=python_path(),
               EASYANIMATE_GPU_CHECK_DETERMINISTIC="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    log = open(work / f"{name}.log", "a")
    return subprocess.Popen(command.accelerate_argv(spec, node), cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) if proc.name.isdigit() else None
        except OSError:
            continue
        if parent is not None:
            children.setdefault(parent, []).append(int(proc.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_trainers(launcher: int, signum: int) -> int:
    """Send ``signum`` to the trainer processes of one launch, not to the launcher: SLURM signals every process,
    but our launcher chain ignores USR2 and accelerate's does not."""
    hit = 0
    for pid in _descendants(launcher):
        try:
            if ENTRY.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signum)
                hit += 1
        except OSError:
            continue
    return hit


def part_resume_bitwise(settings: Settings, work: Path, earlier: dict) -> dict:
    import torch
    from safetensors.torch import load_file
    straight, interrupted = work / "bitwise-A", work / "bitwise-B"
    for folder in (straight, interrupted):
        subprocess.run(["rm", "-rf", str(folder)])
    # The uninterrupted run and the run to interrupt share the machine (deterministic kernels do not care).
    straight_run = _launch(settings, work, "bitwise-A", straight, settings.bitwise_steps)
    first = _launch(settings, work, "bitwise-B", interrupted, settings.bitwise_steps)
    metrics = interrupted / "logs" / "metrics.jsonl"
    while first.poll() is None and _count_lines(metrics) < settings.signal_after_steps:
        time.sleep(0.05)
    signalled = _signal_trainers(first.pid, signal.SIGUSR2) if first.poll() is None else 0
    out = {"signalled_processes": signalled, "interrupted_exit": first.wait(), "straight_exit": straight_run.wait()}
    marker = interrupted / "requeue.json"
    out["requeue"] = json.loads(marker.read_text()) if marker.exists() else None
    out["resumed_exit"] = _launch(settings, work, "bitwise-B", interrupted, settings.bitwise_steps).wait()
    log = (work / "bitwise-B.log").read_text()
    out["resumed_from_checkpoint"] = "resuming from" in log
    weights = "transformer/diffusion_pytorch_model.safetensors"
    if out["straight_exit"] or out["resumed_exit"] or not out["requeue"] or not (interrupted / weights).exists():
        return out | {"status": "FAIL", "tail": log[-3000:],
                      "line": f"exits A {out['straight_exit']}, B {out['interrupted_exit']}/{out['resumed_exit']}, "
                              f"requeue marker {'yes' if out['requeue'] else 'no'}"}
    a, b = load_file(straight / weights), load_file(interrupted / weights)
    differ = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
    worst = max((float((a[k].float() - b[k].float()).abs().max()) for k in differ if k in b), default=0.0)
    out |= {"tensors": len(a), "differing_tensors": len(differ), "max_abs_diff": worst,
            "status": "PASS" if not differ and out["resumed_from_checkpoint"] else "FAIL"}
    out["line"] = (f"USR2 after step {settings.signal_after_steps}, saved at step {out['requeue']['step']}, "
                   f"resumed to {settings.bitwise_steps}: {len(differ)} of {len(a)} tensors differ "
                   f"(max |diff| {worst:g})")
    return out


# ---- the runner ----

def run_part(name: str, settings: Settings, work: Path) -> None:
    """In the part's own process: run it and write work/parts/NAME.json."""
    earlier = {p: json.loads((work / "parts" / f"{p}.json").read_text()) for p in PARTS
               if (work / "parts" / f"{p}.json").exists()}
    result = globals()[f"part_{name}"](settings, work, earlier)
    (work / "parts" / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))


def run_all(settings: Settings, work: Path, out: Path, only: list[str]) -> int:
    work.mkdir(parents=True, exist_ok=True)
    (work / "parts").mkdir(exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    report = {"mode": "dry-run" if settings.tiny else "gpu", "started": time.time(), "parts": {}}
    statuses = {}
    for name in PARTS:
        if only and name not in only:
            continue
        missing = [need for need in NEEDS.get(name, ()) if statuses.get(need, "PASS") not in ("PASS", "INFO")]
        if missing:
            result = {"status": "SKIP", "line": f"needs {', '.join(missing)}"}
        else:
            result = _run_in_process(name, settings, work)
        statuses[name] = result["status"]
        report["parts"][name] = result
        print(f"{name:<15} {result['status']:<5} {result['line']}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    failed = [n for n, s in statuses.items() if s in ("FAIL", "SKIP")]
    print(f"{'gpu_check':<15} {'FAIL' if failed else 'PASS':<5} report: {out / 'gpu_check.json'}", flush=True)
    return 1 if failed else 0


def _run_in_process(name: str, settings: Settings, work: Path) -> dict:
    (work / "parts" / f"{name}.json").unlink(missing_ok=True)
    limit = settings.limits[name]
    argv = [sys.executable, "-m", "benchmarks.gpu.check", "--part", name, "--work", str(work)]
    argv += ["--dry-run"] if settings.tiny else []
    started = time.perf_counter()
    with open(work / f"part-{name}.log", "w") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=python_path()), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return {"status": "FAIL", "line": f"timed out after {limit} s (log: {work / f'part-{name}.log'})"}
    seconds = round(time.perf_counter() - started, 1)
    result_file = work / "parts" / f"{name}.json"
    if process.returncode != 0 or not result_file.exists():
        tail = (work / f"part-{name}.log").read_text()[-3000:]
        return {"status": "FAIL", "line": f"crashed (exit {process.returncode}): {tail.strip().splitlines()[-1:]}",
                "tail": tail, "part_seconds": seconds}
    return json.loads(result_file.read_text()) | {"part_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="Tiny sizes on the CPU (gloo): what CI can run.")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "benchmarks/gpu/results"),
                        help="Folder for gpu_check.json (default $OUT, else benchmarks/gpu/results).")
    parser.add_argument("--work", type=Path, default=Path("/tmp/easyanimate-gpu-check"),
                        help="Scratch folder: models, data, run folders (tens of GB on a GPU).")
    parser.add_argument("--only", nargs="*", default=[], choices=PARTS, help="Run only these parts.")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = DRY if args.dry_run else GPU
    if args.part:
        run_part(args.part, settings, args.work)
        return 0
    return run_all(settings, args.work, args.out, args.only)


if __name__ == "__main__":
    sys.exit(main())
