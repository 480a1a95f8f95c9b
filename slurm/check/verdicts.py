"""From measured facts to PASS / WARN / FAIL / SKIP rows, each with its value and the fix. Pure; standard library.

``facts`` is what the preflight job measured on the nodes (one record per rank, see ``probe.py``) plus what the
submitting side read from SLURM (the partition, the attempt's outcome). Every rule here is a small function of
those facts, so a test can plant any fault without a cluster.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from easyanimate import sizing

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
ORDER = {FAIL: 0, WARN: 1, SKIP: 2, PASS: 3}


@dataclass
class Row:
    area: str
    check: str
    status: str
    value: str
    fix: str = ""


def _mem_bytes(text: Optional[str]) -> Optional[float]:
    """sbatch --mem syntax (default unit MB) to bytes; 0 means 'all of the node' and gives None."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", str(text).strip().upper())
    if not match or float(match.group(1)) == 0:
        return None
    return float(match.group(1)) * 2 ** {"K": 10, "": 20, "M": 20, "G": 30, "T": 40}[match.group(2)]


def _nodes(facts: dict) -> dict[str, list[dict]]:
    by_host: dict[str, list[dict]] = {}
    for record in facts.get("ranks", []):
        by_host.setdefault(record["hostname"], []).append(record)
    return by_host


# ---- allocation -----------------------------------------------------------------------------------------------

def allocation(facts: dict) -> list[Row]:
    job, rows = facts["job"], []
    ranks = facts.get("ranks", [])
    world = job["nodes"] * job["procs_per_node"]
    nodes = _nodes(facts)
    rows.append(Row("allocation", "nodes and processes", PASS if len(ranks) == world else FAIL,
                    f"{len(nodes)} node(s), {len(ranks)}/{world} processes reported",
                    "" if len(ranks) == world else "a node or process never started: see the check job's logs "
                    "(python slurm/submit.py logs JOB_DIR)"))
    if not ranks:
        return rows
    cores = min(r["cpus_bound"] for r in ranks)
    shared = any(_cores_overlap(node) for node in nodes.values())
    wanted = job.get("cpus_per_task")
    per_proc = (wanted // job["procs_per_node"]) if wanted else None
    status = PASS
    fix = ""
    if cores < 2 or (per_proc and cores < per_proc):
        status, fix = WARN, ("each process is bound to fewer cores than its data-loader workers need: set "
                             "--cpus-per-task (and check that srun passes it: SRUN_CPUS_PER_TASK)")
    rows.append(Row("allocation", "CPU cores per process", status,
                    f"min {cores} bound{' (processes share cores)' if shared else ''}"
                    + (f", asked {wanted} per node" if wanted else ""), fix))
    granted = min(r["memory_bytes"] for r in ranks)
    asked = _mem_bytes(job.get("mem"))
    rows.append(Row("allocation", "memory per node", WARN if asked and granted < 0.95 * asked else PASS,
                    f"{granted / 1e9:.1f} GB granted" + (f", {asked / 1e9:.1f} GB asked" if asked else ""),
                    "the site granted less than asked: ask with --mem and check the partition's MaxMemPerNode"
                    if asked and granted < 0.95 * asked else ""))
    rows += _gpus(job, ranks)
    return rows


def _cores_overlap(node: list[dict]) -> bool:
    sets = [set(r["cpu_list"]) for r in node]
    return any(sets[i] & sets[j] for i in range(len(sets)) for j in range(i + 1, len(sets)))


def _gpus(job: dict, ranks: list[dict]) -> list[Row]:
    if job["gpus_per_node"] == 0:
        return [Row("allocation", "GPUs, driver and CUDA", SKIP, "CPU job (--gpus-per-node 0)")]
    seen = min(r.get("gpu_count", 0) for r in ranks)
    names = sorted({r.get("gpu_name") or "?" for r in ranks})
    rows = [Row("allocation", "GPUs per node", PASS if seen >= job["gpus_per_node"] else FAIL,
                f"{seen} visible of {job['gpus_per_node']} asked ({', '.join(names)})",
                "" if seen >= job["gpus_per_node"] else "request typed GPUs the partition has (--gres/"
                "--gpus-per-node) and run inside the image with --nv")]
    driver = ranks[0].get("driver_cuda")
    built = ranks[0].get("torch_cuda")
    if driver and built:
        ok = _version(driver) >= _version(built)
        rows.append(Row("allocation", "driver vs image CUDA", PASS if ok else FAIL,
                        f"driver supports CUDA {driver}, image's torch built for {built}",
                        "" if ok else "the node driver is older than the image's CUDA: use an image built on an "
                        "older CUDA base, or ask the site for a newer driver"))
    return rows


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def partition(facts: dict) -> list[Row]:
    part = facts.get("partition") or {}
    if not part:
        return [Row("preemption", "partition settings", SKIP, "scontrol gave no partition details")]
    mode = part.get("PreemptMode", "?")
    rows = [Row("preemption", "PreemptMode", WARN if "CANCEL" in mode.upper() else PASS, mode,
                "preemption cancels jobs here: the job resubmits itself (keep the job folder); expect a new "
                "job id after each preemption" if "CANCEL" in mode.upper() else "")]
    user_signal = part.get("preempt_send_user_signal")
    rows.append(Row("preemption", "warning signal on preemption", PASS if user_signal else WARN,
                    "preempt_send_user_signal set" if user_signal else "SIGTERM only (preempt_send_user_signal "
                    "not set)", "" if user_signal else "the trainer also saves on SIGTERM; make sure GraceTime "
                    "covers the save (below)"))
    return rows


# ---- container ------------------------------------------------------------------------------------------------

def container(facts: dict) -> list[Row]:
    job, ranks = facts["job"], facts.get("ranks", [])
    outcome = facts.get("outcome") or {}
    rows = []
    if job["container"] == "none":
        rows.append(Row("container", "runtime", SKIP, "--container none (host environment)"))
    elif not ranks:
        rows.append(Row("container", "runtime and image", FAIL, outcome.get("detail", "no process started"),
                        "install Apptainer (or load its module with a setup: line) on every compute node, and "
                        "put the image where every node can read it"))
    else:
        runtimes = sorted({r.get("runtime", "host") for r in ranks})
        rows.append(Row("container", "runtime and image", PASS, ", ".join(runtimes)))
    for record in ranks[:1]:
        missing = sorted(name for name, version in record.get("imports", {}).items() if version is None)
        versions = ", ".join(f"{k} {v}" for k, v in sorted(record.get("imports", {}).items()) if v)
        rows.append(Row("container", "python packages", FAIL if missing else PASS,
                        f"{versions}" + (f"; missing {', '.join(missing)}" if missing else ""),
                        f"the environment lacks {', '.join(missing)}: rebuild the image from "
                        "containers/easyanimate.def (or containers/setup_venv.sh without a container)"
                        if missing else ""))
        env = record.get("environment", {})
        rows.append(Row("container", "effective NCCL/torch variables", PASS,
                        " ".join(f"{k}={v}" for k, v in sorted(env.items())) or "(none set)"))
    return rows


# ---- signals --------------------------------------------------------------------------------------------------

def signals(facts: dict) -> list[Row]:
    test = facts.get("signal_test") or {}
    ranks = facts.get("ranks", [])
    if not test.get("sent"):
        return [Row("signals", "warning signal reaches the trainer", FAIL,
                    test.get("error") or "the self-signal was not sent", "see the check job's logs")]
    seen = [r for r in ranks if r.get("signal_seen")]
    chains = facts.get("node_chains", [])
    died = [c for c in chains if c.get("exit_code") not in (0, None)]
    rows = [Row("signals", "trainer processes saw the signal", PASS if ranks and len(seen) == len(ranks) else FAIL,
                f"{len(seen)}/{len(ranks)} processes saw {test['signal']} during a {test['save_s']:.0f} s save",
                "" if ranks and len(seen) == len(ranks) else
                "the signal did not reach every training process: check --signal and that srun starts one task "
                "per node")]
    rows.append(Row("signals", "launch chain survived", FAIL if died or len(chains) < facts["job"]["nodes"] else
                    PASS, f"{len(chains) - len(died)}/{facts['job']['nodes']} node chains exited cleanly" +
                    (f"; {', '.join(c['host'] + ' exit ' + str(c['exit_code']) for c in died)}" if died else ""),
                    "a launcher process died of the signal: the container runtime reset an ignored signal; "
                    "launch through slurm/inside.py (it re-establishes the dispositions)" if died else ""))
    return rows


# ---- fabric ---------------------------------------------------------------------------------------------------

def fabric(facts: dict) -> list[Row]:
    bench = facts.get("allreduce") or {}
    if not bench.get("results"):
        return [Row("fabric", "all-reduce", SKIP if facts["job"]["nodes"] * facts["job"]["procs_per_node"] == 1
                    else FAIL, bench.get("error") or "one process: nothing to reduce",
                    "" if not bench.get("error") else "see the check job's logs")]
    best = max(r["busbw_gbps"] for r in bench["results"])
    sizes = ", ".join(f"{r['bytes'] / 2**20:.0f} MiB {r['busbw_gbps']:.2f} GB/s" for r in bench["results"])
    rows = [Row("fabric", f"all-reduce bus bandwidth ({bench['backend']})", PASS, sizes + f"; best {best:.2f} GB/s")]
    transport = bench.get("transport")
    if bench["backend"] == "nccl":
        fast_nics = sorted({d for r in facts.get("ranks", []) for d in r.get("rdma_devices", [])})
        sockets = transport is not None and "socket" in transport.lower()
        rows.append(Row("fabric", "NCCL transport", WARN if sockets and fast_nics else PASS,
                        f"{transport or 'unknown'}" + (f"; RDMA devices: {', '.join(fast_nics)}" if fast_nics else ""),
                        "NCCL fell back to TCP sockets although the nodes have RDMA devices: choose --nccl "
                        "infiniband/roce/efa and use an image with rdma-core (and aws-ofi-nccl on EFA)"
                        if sockets and fast_nics else ""))
    return rows


# ---- storage --------------------------------------------------------------------------------------------------

def storage(facts: dict) -> list[Row]:
    store = facts.get("storage") or {}
    nodes = store.get("nodes") or []
    if store.get("error") or not nodes:
        rows = [Row("storage", "output folder writable", FAIL, store.get("error") or "no node reported a write test",
                    "choose an --output_dir (training flag) on a filesystem every node can create and write, "
                    "e.g. project or scratch space")]
        speed = None
    else:
        speed = min(n["gbps"] for n in nodes)
        rows = [Row("storage", "output folder writable", PASS, store["path"]),
                Row("storage", "write+fsync, all nodes at once", PASS,
                    f"slowest node {speed:.2f} GB/s, total {sum(n['gbps'] for n in nodes):.2f} GB/s "
                    f"({store['bytes_per_node'] / 2**20:.0f} MiB per node)")]
    return rows + _lead_time(facts, speed) + _space(facts, store.get("free_bytes"))


def _layout(job: dict) -> sizing.Layout:
    return sizing.Layout(nodes=job["nodes"], gpus_per_node=job["procs_per_node"], deepspeed=job["deepspeed"])


def _lead_time(facts: dict, speed: Optional[float]) -> list[Row]:
    """The signal lead time (and a preemption's GraceTime) against this model's save at the measured speed, or at
    the stated conservative one when the write test failed."""
    job, params = facts["job"], facts.get("params")
    if not params:
        return [Row("storage", "signal lead time", SKIP, "model size unknown (no readable transformer weights)")]
    layout = _layout(job)
    speed_text = f"{speed:.2f} GB/s measured" if speed else f"{sizing.CONSERVATIVE_WRITE_GBPS} GB/s assumed"
    busiest = max(sizing.checkpoint_bytes_per_node(params, layout))
    save_s = busiest / ((speed or sizing.CONSERVATIVE_WRITE_GBPS) * sizing.GB)
    need = sizing.lead_time_s(params, layout, write_gbps=speed)
    # Below the save alone with its safety factor and SLURM's check interval, no step length makes it work.
    floor = sizing.SAVE_SAFETY * save_s + sizing.MARGIN_S
    lead = job["signal_lead_s"]
    status = FAIL if lead < floor else WARN if lead < need else PASS
    rows = [Row("storage", "signal lead time", status,
                f"--signal-lead-s {lead}; checkpoint {_bytes(busiest)} on the busiest node, save {save_s:.0f} s at "
                f"{speed_text}; needs {need} s with a step and margin", "" if status == PASS else
                f"raise --signal-lead-s to at least {need} (at least {floor:.0f} for the save alone)")]
    grace = (facts.get("partition") or {}).get("GraceTime")
    if grace is not None:
        # Preemption signals at once and kills after GraceTime: no limit-check interval to allow for.
        grace_s, grace_need, grace_floor = int(grace), need - sizing.MARGIN_S, sizing.SAVE_SAFETY * save_s
        rows.append(Row("storage", "partition GraceTime covers step + save",
                        PASS if grace_s >= grace_need else FAIL if grace_s < grace_floor else WARN,
                        f"GraceTime={grace_s} s, need {grace_need:.0f} s ({grace_floor:.0f} s for the save alone)",
                        "" if grace_s >= grace_need else "a preemption here may end the job before its save: ask "
                        "the site for a longer GraceTime on this partition, or use another partition"))
    return rows


def _space(facts: dict, free: Optional[int]) -> list[Row]:
    params = facts.get("params")
    if free is None or not params:
        return []
    total = sizing.checkpoint_bytes(params, _layout(facts["job"]))
    return [Row("storage", "space for two checkpoints", PASS if free >= 2 * total else
                FAIL if free < total else WARN, f"{_bytes(free)} free (quota or disk), one checkpoint {_bytes(total)}",
                "" if free >= 2 * total else "free space or quota is short: clean up, ask for quota, or set "
                "--checkpoints_total_limit")]


def _bytes(count: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


def _count(number: int) -> str:
    return f"{number / 1e9:.2f}B" if number >= 1e8 else f"{number:,}"


# ---- data and model -------------------------------------------------------------------------------------------

def data_and_model(facts: dict) -> list[Row]:
    found = facts.get("data") or {}
    rows = []
    missing = found.get("missing_paths", [])
    rows.append(Row("data", "paths seen from a compute node", FAIL if missing else PASS,
                    f"missing: {', '.join(missing)}" if missing else f"{len(found.get('paths', []))} path(s) found",
                    "put model and data on a filesystem the compute nodes mount (and bind it into the container)"
                    if missing else ""))
    sample = found.get("sample")
    if sample is not None:
        bad = sample.get("bad", [])
        rows.append(Row("data", "check-data on a sample", FAIL if bad else PASS,
                        f"{sample['checked'] - len(bad)}/{sample['checked']} decoded" +
                        (f"; first problem: {bad[0]}" if bad else ""),
                        "run easyanimate check-data on the whole metadata and fix or drop the files it names"
                        if bad else ""))
    model = facts.get("model")
    if model is not None:
        rows.append(Row("model", "model folder (strict, no weights loaded)", FAIL if model.get("error") else PASS,
                        model.get("error") or f"{model['layout']} layout, {_count(model['params'])} transformer "
                        "parameters, every tensor name and shape matches", "pass the model root in the layout "
                        "named (see README: Models and layouts)" if model.get("error") else ""))
    return rows


RULES: tuple[Callable[[dict], list[Row]], ...] = (allocation, partition, container, signals, fabric, storage,
                                                  data_and_model)


def evaluate(facts: dict) -> list[Row]:
    rows = []
    for rule in RULES:
        try:
            rows += rule(facts)
        except (KeyError, TypeError, ValueError) as error:  # incomplete facts: say so instead of a traceback
            rows.append(Row(rule.__name__, "evaluation", FAIL, f"facts incomplete ({error!r})",
                            "see the check job's logs"))
    return rows


def overall(rows: list[Row]) -> str:
    return min((r.status for r in rows if r.status != SKIP), key=ORDER.__getitem__, default=PASS)


def table(rows: list[Row]) -> str:
    widths = [max(len(r.area) for r in rows), max(len(r.check) for r in rows), 4]
    lines = []
    for r in rows:
        lines.append(f"{r.status:<{widths[2]}}  {r.area:<{widths[0]}}  {r.check:<{widths[1]}}  {r.value}")
        if r.fix and r.status in (FAIL, WARN):
            lines.append(f"{'':<{widths[2]}}  {'':<{widths[0]}}  {'':<{widths[1]}}  fix: {r.fix}")
    return "\n".join(lines) + f"\n\noverall: {overall(rows)}\n"


def as_json(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
