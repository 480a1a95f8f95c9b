"""The preflight job's program: runs in place of the trainer, launched exactly as the trainer is (same sbatch
script, launcher, container and accelerate command), and measures what the verdicts need.

Every rank reports its allocation (cores it is bound to, memory, GPUs, driver), its environment (runtime,
package versions, NCCL/torch variables, RDMA devices) and whether the trainer's own preemption handler saw the
warning signal that the job sends itself during a dummy save. Then all ranks time all-reduces with the job's
backend, the first process of each node times a write+fsync into the output folder (all nodes at once), and
rank 0 checks the data and model paths. Rank 0 writes ``facts.json`` into the results folder and, last, the
``complete.json`` marker, so the attempt is recorded as completed. Each part catches its own failure and
reports it: a broken part is a FAIL row, not a missing table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # launched by path, as the trainer is
    # replace, not prepend: the script's own folder would shadow the standard library (slurm/secrets.py)
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from easyanimate import distributed, runfolder  # noqa: E402
from easyanimate.training.signals import PreemptionHandler  # noqa: E402

SIGNAL_REQUEST = "signal-request.json"
REPORTED_PREFIXES = ("NCCL_", "TORCH_NCCL_", "TORCH_ELASTIC_", "FI_", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                     "PYTHONNOUSERSITE", "DS_ACCELERATOR")
PACKAGES = ("torch", "accelerate", "deepspeed", "diffusers", "transformers", "decord")
BLOCK = 8 << 20


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slurm/check/probe.py")
    parser.add_argument("--results", required=True, help="Folder for facts.json (in the check's job folder).")
    parser.add_argument("--marker-dir", required=True, help="The check job's own run folder (markers).")
    parser.add_argument("--output-dir", required=True, help="The training job's output folder (storage test).")
    parser.add_argument("--signal", default="USR2")
    parser.add_argument("--save-s", type=float, default=5.0, help="Length of the dummy save.")
    parser.add_argument("--signal-wait-s", type=float, default=60.0)
    parser.add_argument("--storage-mib", type=int, default=2048, help="Bytes each node writes, in MiB.")
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[1, 16, 128])
    parser.add_argument("--paths", nargs="*", default=[], help="Model and data paths that must exist.")
    parser.add_argument("--train-data-meta")
    parser.add_argument("--train-data-dir")
    parser.add_argument("--sample", type=int, default=32, help="Metadata entries to decode.")
    parser.add_argument("--model")
    parser.add_argument("--config-path")
    return parser.parse_args(argv)


# ---- this process ---------------------------------------------------------------------------------------------

def _memory_bytes() -> int:
    """What this process may use: the cgroup's limit when there is one, else the node's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _driver_cuda() -> str | None:
    """The newest CUDA the node's driver supports (nvidia-smi's header), or None without a driver."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    marker = "CUDA Version:"
    return out.split(marker, 1)[1].split()[0] if marker in out else None


def _version(name: str) -> str | None:
    try:
        module = __import__(name)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None
    return str(getattr(module, "__version__", "?"))


def _rdma_devices() -> list[str]:
    folder = Path("/sys/class/infiniband")
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _node_name() -> str:
    # SLURM's name for the node: hosts that share a hostname (containers, the test cluster) stay apart.
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def this_process() -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    record = {"rank": distributed.rank(), "local_rank": distributed.local_rank(), "hostname": _node_name(),
              "cpus_bound": len(cpus), "cpu_list": cpus, "memory_bytes": _memory_bytes(),
              "runtime": ("apptainer " + os.environ["APPTAINER_CONTAINER"]) if "APPTAINER_CONTAINER" in os.environ
              else "host", "python": sys.executable,
              "imports": {name: _version(name) for name in PACKAGES},
              "environment": {k: v for k, v in os.environ.items() if k.startswith(REPORTED_PREFIXES)},
              "rdma_devices": _rdma_devices(), "gpu_count": 0}
    if torch.cuda.is_available():
        record.update(gpu_count=torch.cuda.device_count(), gpu_name=torch.cuda.get_device_name(),
                      torch_cuda=torch.version.cuda, driver_cuda=_driver_cuda())
    return record


# ---- signals --------------------------------------------------------------------------------------------------

def signal_self(args: argparse.Namespace) -> dict:
    """Rank 0 asks SLURM to send the job's warning signal to every process of the job's steps (not the batch
    shell), as SLURM does before a time limit. Inside an image without SLURM's tools, the waiting ``check``
    command on the submitting machine sends it on request."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return {"sent": False, "error": "not inside a SLURM job (SLURM_JOB_ID unset)"}
    if shutil.which("scancel"):
        done = subprocess.run(["scancel", f"--signal={args.signal}", job_id], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            return {"sent": False, "error": f"scancel --signal failed: {done.stderr.strip()}"}
        return {"sent": True, "by": "scancel inside the job", "signal": args.signal, "at": time.time()}
    runfolder.write_json_atomic(Path(args.results) / SIGNAL_REQUEST, {"job_id": job_id, "signal": args.signal,
                                                                      "time": time.time()})
    return {"sent": True, "by": "the check command (no scancel in the image)", "signal": args.signal,
            "at": time.time()}


def dummy_save(handler: PreemptionHandler, save_s: float, wait_s: float) -> float:
    """Stand in for a checkpoint write: ``save_s`` seconds of work, extended until the signal came (at most
    ``wait_s``). Returns how long it ran."""
    started = time.monotonic()
    while time.monotonic() - started < save_s or (handler.received is None and
                                                  time.monotonic() - started < wait_s):
        time.sleep(0.1)
    return time.monotonic() - started


# ---- fabric ---------------------------------------------------------------------------------------------------

def allreduce_bench(sizes_mib: list[float], device: torch.device, repeats: int = 5) -> dict:
    world = distributed.world_size()
    results = []
    for mib in sizes_mib:
        tensor = torch.ones(int(mib * 2**20) // 4, dtype=torch.float32, device=device)
        for _ in range(2):
            dist.all_reduce(tensor)
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(tensor)
        _sync(device)
        seconds = (time.perf_counter() - started) / repeats
        algbw = tensor.numel() * 4 / seconds / 1e9
        results.append({"bytes": tensor.numel() * 4, "seconds": seconds, "algbw_gbps": algbw,
                        "busbw_gbps": algbw * 2 * (world - 1) / world})
    return {"backend": dist.get_backend(), "results": results}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nccl_transport(results: Path) -> str | None:
    """The network NCCL chose, from its INFO log ('NET/IB', 'NET/Socket', 'NET/OFI' ...)."""
    found = set()
    for log in results.glob("nccl.*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "NET/" in line and ("Using" in line or "via" in line):
                found.add(line.split("NET/", 1)[1].split()[0].rstrip(":,"))
    return ", ".join(sorted(found)) or None


# ---- storage --------------------------------------------------------------------------------------------------

def write_test(folder: Path, mib: int) -> dict:
    """Write and fsync ``mib`` MiB into ``folder``; bandwidth in GB/s. The file is removed afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"write-test-{_node_name()}-{os.getpid()}.bin"
    block = os.urandom(BLOCK)
    started = time.perf_counter()
    try:
        with open(path, "wb") as file:
            for _ in range(max(1, mib * 2**20 // BLOCK)):
                file.write(block)
            file.flush()
            os.fsync(file.fileno())
        seconds = time.perf_counter() - started
    finally:
        path.unlink(missing_ok=True)
    written = max(1, mib * 2**20 // BLOCK) * BLOCK
    return {"host": _node_name(), "bytes": written, "seconds": seconds, "gbps": written / seconds / 1e9}


def free_bytes(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


# ---- data and model -------------------------------------------------------------------------------------------

def data_facts(args: argparse.Namespace) -> dict:
    paths = [p for p in args.paths if p]
    found = {"paths": paths, "missing_paths": [p for p in paths if not os.path.exists(p)]}
    if args.train_data_meta and os.path.isfile(args.train_data_meta):
        found["sample"] = sample_check(args.train_data_meta, args.train_data_dir, args.sample)
    return found


def sample_check(meta: str, data_dir: str | None, count: int) -> dict:
    """``check-data`` on ``count`` entries spread over the metadata, decoded with this environment's decoders."""
    from easyanimate.data.metadata import read_entries
    from easyanimate.data.preflight import CheckOptions, check_entry

    entries = read_entries(meta, lenient=True)
    step = max(1, len(entries) // max(1, count))
    picked = list(range(0, len(entries), step))[:count]
    bad = []
    for index in picked:
        problems, _ = check_entry(index, entries[index], data_dir, CheckOptions(n_frames=1, stride=1))
        bad += [p.line() for p in problems if p.severity == "error"]
    return {"checked": len(picked), "entries": len(entries), "bad": bad}


def model_facts(model: str, config_path: str | None) -> dict:
    from easyanimate.models.check import check_model_folder
    try:
        return check_model_folder(model, config_path)
    except Exception as error:  # noqa: BLE001 - every failure of the model folder is the finding
        return {"error": f"{type(error).__name__}: {error}"}


# ---- main -----------------------------------------------------------------------------------------------------

def _init(results: Path) -> torch.device:
    """The process group of the job's backend; returns the device its collectives use (distributed.py's rule)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return torch.device("cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        os.environ.setdefault("NCCL_DEBUG", "INFO")
        os.environ.setdefault("NCCL_DEBUG_SUBSYS", "INIT,NET")
        os.environ.setdefault("NCCL_DEBUG_FILE", str(results / "nccl.%h.%p.log"))
        torch.cuda.set_device(distributed.local_rank())
    dist.init_process_group(backend, timeout=timedelta(minutes=5))
    return distributed.collective_device()


def _part(name: str, work, *args) -> dict:
    try:
        return work(*args)
    except Exception as error:  # noqa: BLE001 - a failed part is a finding for the table
        return {"error": f"{name}: {type(error).__name__}: {error}"}


def run(args: argparse.Namespace) -> dict:
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    handler = PreemptionHandler().install()  # the trainer's own handler: what it sees, training would see
    device = _init(results)
    record = this_process()
    distributed.barrier()
    signal_test = _part("signal", signal_self, args) if distributed.is_main() else {}
    record["save_s"] = dummy_save(handler, args.save_s, args.signal_wait_s)
    record["signal_seen"] = handler.received
    distributed.barrier()
    fabric = _part("all-reduce", allreduce_bench, args.sizes_mib, device) if distributed.world_size() > 1 else {}
    distributed.barrier()
    folder = Path(args.output_dir) / f".preflight-{os.environ.get('SLURM_JOB_ID', os.getpid())}"
    store = _part("storage", write_test, folder, args.storage_mib) if distributed.local_rank() == 0 else None
    writes = [w for w in distributed.gather_lists([store]) if w is not None]
    facts = {"ranks": distributed.gather_lists([record]), "signal_test": {**signal_test, "save_s": args.save_s}}
    if not distributed.is_main():
        return facts
    errors = [w["error"] for w in writes if "error" in w]
    facts["storage"] = {"path": args.output_dir, "error": "; ".join(errors) or None,
                        "nodes": [w for w in writes if "error" not in w],
                        "bytes_per_node": args.storage_mib * 2**20,
                        "free_bytes": None if errors else free_bytes(Path(args.output_dir))}
    shutil.rmtree(folder, ignore_errors=True)
    if fabric:
        facts["allreduce"] = {**fabric, "transport": nccl_transport(results)}
    facts["data"] = data_facts(args)
    if args.model:
        facts["model"] = model_facts(args.model, args.config_path)
    return facts


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    facts = run(args)
    if distributed.is_main():
        runfolder.write_json_atomic(Path(args.results) / "facts.json", facts)
        runfolder.write_marker(args.marker_dir, runfolder.COMPLETE_MARKER, {"step": 0, "checkpoint": None})
    if distributed.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Straight out, without the interpreter's finalization: CI saw a rank that had done all its work and destroyed
    # its gloo group abort there ("terminate called without an active exception", SIGABRT: a native thread still
    # joinable while the interpreter tears down), and the check then reported its launch chain as killed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
