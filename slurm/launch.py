"""What runs on the nodes, in three steps the sbatch script calls (standard library only):

- ``begin`` (batch shell, before srun): open this attempt's record, settle earlier attempts SLURM requeued
  without asking us, refuse to start past a retry budget.
- ``node`` (one SLURM task per node): machine rank, MASTER_ADDR/PORT, NCCL environment, then the container and
  ``accelerate launch``; records the signals it saw and the exit code. Signals are not forwarded on SLURM:
  slurmstepd sends them to every process of the step itself.
- while training runs, node 0's launcher watches the run folder: once the trainer's requeue marker proves the
  checkpoint was committed by every rank, it requeues the job from inside (or resubmits it where the partition
  cancels preempted jobs or refuses the requeue), within the budget of its kind (slurm/requeue.py).
- ``end`` (batch shell, after srun): records the attempt's outcome; it brings the job back only if node 0 did
  not (a node failure or a time limit, which SLURM does not requeue itself). Crashes are never requeued; SLURM's
  own requeues never twice.

Usage: ``python slurm/launch.py begin|node|end JOB_DIR/job.json [...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script on the nodes: make the repository importable
    # replace, not prepend: the script's own folder would shadow the standard library (slurm/secrets.py)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from easyanimate import redact, runfolder  # noqa: E402
from slurm import attempts, command, nccl, requeue, secrets  # noqa: E402
from slurm import spec as specs  # noqa: E402
from slurm.command import NodeContext  # noqa: E402
from slurm.spec import JobSpec  # noqa: E402

logger = logging.getLogger("slurm.launch")
RECORDED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list (``gpu[001-003,007],login1``) as host names, for nodes without scontrol."""
    hosts, parts, depth, start = [], [], 0, 0
    for i, ch in enumerate(nodelist + ","):  # split on commas outside brackets
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(nodelist[start:i])
            start = i + 1
    for part in filter(None, parts):
        match = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", part)
        if match is None:
            hosts.append(part)
            continue
        prefix, ranges, rest = match.groups()
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            for number in range(int(low), int(high or low) + 1):
                hosts += [f"{prefix}{number:0{len(low)}d}{tail}" for tail in expand_nodelist(rest) or [""]]
    return hosts


def first_host(nodelist: str) -> str:
    """First host of SLURM_JOB_NODELIST, expanded by SLURM itself where scontrol is on PATH."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_nodelist(nodelist)[0]


def slurm_context(environ: dict[str, str]) -> NodeContext:
    job_id = environ["SLURM_JOB_ID"]
    return NodeContext(
        job_id=job_id,
        num_nodes=int(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or 1),
        node_rank=int(environ.get("SLURM_NODEID", 0)),
        master_addr=first_host(environ["SLURM_JOB_NODELIST"]) if "SLURM_JOB_NODELIST" in environ else "127.0.0.1",
        master_port=str(command.master_port(job_id)),
        restart_count=int(environ.get("SLURM_RESTART_COUNT") or 0),
    )


# --- begin ---------------------------------------------------------------------------------------------------

def _settle_previous(spec: JobSpec, node: NodeContext) -> None:
    """Earlier attempts of this job that our ``end`` did not close (SLURM killed the batch shell after KillWait),
    or closed as cancelled, were requeued by SLURM itself: classify them from what they left behind."""
    for folder in attempts.attempt_dirs(Path(spec.job_dir)):
        job, _, restart = folder.name.partition(".")
        record = runfolder.read_json(folder / "attempt.json")
        if job != node.job_id or int(restart) >= node.restart_count or record is None:
            continue
        if record.get("outcome") is not None and record["outcome"]["kind"] != attempts.CANCELLED:
            continue
        # SLURM's view has moved on to this attempt; the batch shell of that one got SIGTERM (or SIGKILL).
        outcome = attempts.classify(requeue.gather(spec, folder, node.num_nodes, 0, "TERM", job_info={}))
        if outcome.kind == attempts.CANCELLED:
            outcome.kind = attempts.PREEMPTED
        outcome.requeue, outcome.detail = False, f"requeued by SLURM: {outcome.detail}"
        record["outcome"] = attempts.outcome_dict(outcome)
        runfolder.write_json_atomic(folder / "attempt.json", record)
        logger.warning("attempt %s: %s, %s", folder.name, outcome.kind, outcome.detail)


def begin(spec: JobSpec, node: NodeContext) -> int:
    _settle_previous(spec, node)
    folder = command.attempt_dir(spec, node)
    checkpoint = runfolder.latest_checkpoint(Path(spec.output_dir))
    record = {"job_id": node.job_id, "restart_count": node.restart_count, "started": time.time(),
              "nodelist": os.environ.get("SLURM_JOB_NODELIST", socket.gethostname()),
              "num_nodes": node.num_nodes, "world_size": node.num_nodes * spec.procs_per_node,
              "resume_from": checkpoint, "outcome": None}
    logger.info("attempt %s: SLURM_RESTART_COUNT=%d, %d node(s) %s, resuming from %s", node.attempt_id,
                node.restart_count, node.num_nodes, record["nodelist"],
                f"step {checkpoint['step']} ({checkpoint['path']})" if checkpoint else "scratch")
    reason = attempts.over_budget(requeue.history(spec, node.job_id, before=node.attempt_id),
                                  requeue.limits(spec))
    if reason:
        record["outcome"] = attempts.outcome_dict(attempts.Outcome(attempts.BUDGET_EXHAUSTED, reason))
        logger.error("attempt %s not started: %s", node.attempt_id, reason)
    else:
        # The fence: from now on only this attempt's processes may commit a checkpoint or a marker; a process
        # left over from an earlier attempt (a node that lost contact, a slow teardown) is refused.
        runfolder.claim(spec.output_dir, node.attempt_id)
    runfolder.write_json_atomic(folder / "attempt.json", record)
    return 3 if reason else 0


# --- node ----------------------------------------------------------------------------------------------------

class SignalLog:
    """Records every preemption-type signal this launcher receives, on disk at once (SLURM may SIGKILL us after
    KillWait); forwards it to the whole training process tree when asked (local runs: no slurmstepd to do it)."""

    def __init__(self, record: dict, path: Path, forward_to: subprocess.Popen | None = None):
        self.record, self.path, self.forward_to = record, path, forward_to

    @property
    def received(self) -> list[dict]:
        return self.record["signals"]

    def install(self) -> None:
        for sig in RECORDED_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        # A Python-level handler runs between bytecodes of the main thread, so file I/O here is safe.
        self.received.append({"name": signal.Signals(signum).name.removeprefix("SIG"), "time": time.time()})
        runfolder.write_json_atomic(self.path, self.record)
        if self.forward_to is not None and self.forward_to.poll() is None:
            signal_tree(self.forward_to.pid, signum)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, as slurmstepd's linuxproc tracking sees them (torchrun puts its workers
    in new sessions, so a process-group signal would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def signal_tree(root: int, signum: int) -> int:
    """``signum`` to ``root`` and every process below it (listed before any is signalled: a killed parent's
    children move to init). Returns how many there were."""
    tree = process_tree(root)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    return len(tree)


def node_environment(spec: JobSpec, node: NodeContext) -> dict[str, str]:
    env = {**command.node_env(spec, node, dict(os.environ)),
           runfolder.ATTEMPT_ENV: node.attempt_id}  # the fence's id (begin claims)
    hardware = nccl.detect_hardware()
    for warning in nccl.warnings(env, hardware, profile=spec.nccl):
        logger.warning("NCCL: %s", warning)
    logger.info("node %d/%d on %s: master %s:%s, NCCL profile %r: %s", node.node_rank, node.num_nodes,
                socket.gethostname(), node.master_addr, node.master_port, spec.nccl,
                " ".join(f"{k}={v}" for k, v in sorted(redact.mapping(env).items())
                         if k not in os.environ or os.environ[k] != env[k]))
    return env


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


MASTER_PORT_TRIES = 64


def agree_master_port(node: NodeContext, folder: Path, *, free=port_free, timeout_s: float = 300,
                      stop=lambda: False) -> NodeContext:
    """The job's stable port may be taken on the master host (another job, a stale process): node 0 takes the
    first free one from there and publishes it in the attempt folder, which every node sees; the others wait
    for it. A taken port is skipped, not a crash of the rendezvous."""
    path = folder / "master_port.json"
    if node.node_rank == 0:
        first = int(node.master_port)
        port = next((p for p in range(first, first + MASTER_PORT_TRIES) if free(p)), None)
        if port is None:
            raise RuntimeError(f"ports {first}-{first + MASTER_PORT_TRIES - 1} are all taken on {socket.gethostname()}")
        if port != first:
            logger.warning("master port %d is taken on %s; using %d", first, socket.gethostname(), port)
        runfolder.write_json_atomic(path, {"port": port, "host": socket.gethostname()})
    else:
        deadline = time.monotonic() + timeout_s
        while (published := runfolder.read_json(path)) is None:
            if stop():  # signalled while waiting: the caller will not start training
                return node
            if time.monotonic() > deadline:
                raise RuntimeError(f"node 0 did not publish the master port in {path} within {timeout_s:.0f}s")
            time.sleep(0.2)
        port = published["port"]
    return dataclasses.replace(node, master_port=str(port))


def _config_error(record: dict, path: Path, node: NodeContext, problem: str) -> int:
    record.update(config_error=problem, exit_code=command.CONFIG_ERROR_EXIT, ended=time.time())
    runfolder.write_json_atomic(path, record)
    logger.error("node %d cannot start training: %s", node.node_rank, problem)
    return command.CONFIG_ERROR_EXIT


def _chain_dispositions() -> None:
    """In the launcher chain's first process, before exec: USR1/USR2 ignored (inherited through exec; inside.py
    sets them again after a container runtime, a Go program, reset them). The trainer installs its own handlers,
    so only the training processes act on them."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def run_node(spec: JobSpec, node: NodeContext, *, forward_signals: bool = False) -> int:
    folder = command.attempt_dir(spec, node)
    folder.mkdir(parents=True, exist_ok=True)
    (Path(spec.job_dir) / "nccl_trace").mkdir(exist_ok=True)  # where the flight recorder dumps on a timeout
    record_path = folder / f"node{node.node_rank}.json"
    record = {"node_rank": node.node_rank, "hostname": socket.gethostname(), "started": time.time(), "signals": []}
    runfolder.write_json_atomic(record_path, record)
    signals = SignalLog(record, record_path)
    signals.install()  # from here on a signal is recorded, never fatal: SLURM may requeue while we start
    runtime = command.find_runtime() if spec.container != "none" else None
    problem = command.container_problem(spec, runtime)
    if problem:
        return _config_error(record, record_path, node, problem)
    node = agree_master_port(node, folder, stop=lambda: bool(signals.received))
    env = node_environment(spec, node)
    argv = command.node_argv(spec, node, runtime or "apptainer")
    if runtime:
        redact.write_private(command.env_file(spec, node), command.env_file_text(env))  # may hold secrets
        child_env = {**os.environ, **command.passthrough_env(dict(os.environ), runtime)}
    else:
        child_env = {**os.environ, **env}
    record["argv"] = redact.argv(argv)
    runfolder.write_json_atomic(record_path, record)
    if signals.received:  # told to stop before training started: nothing to save, nothing to start
        return _finish(record, record_path, node, 0)
    logger.info("node %d runs: %s", node.node_rank, " ".join(redact.argv(argv)))
    try:
        child = subprocess.Popen(argv, env=child_env, cwd=spec.root, preexec_fn=_chain_dispositions)
    except OSError as error:
        return _config_error(record, record_path, node, f"cannot start {argv[0]}: {error}")
    signals.forward_to = child if forward_signals else None
    return _finish(record, record_path, node, wait_training(child, Path(spec.output_dir), record["started"],
                                                            spec.teardown_grace_s))


def wait_training(child: subprocess.Popen, output: Path, started: float, grace_s: float, *,
                  every: float = 1.0) -> int:
    """The training processes' exit code. Once this attempt's ``complete.json`` is committed, they have ``grace_s``
    to exit; a teardown that hangs longer (an NCCL or gloo shutdown, torchrun's exit barrier waiting for a peer)
    is ended here and the node reports success: the run is finished and its checkpoint committed, and a hung exit
    must not run into the time limit (a TIMEOUT, never requeued) or fail the job."""
    finished_at = None
    while True:
        try:
            return child.wait(timeout=every)
        except subprocess.TimeoutExpired:
            pass
        if finished_at is None:
            if runfolder.read_marker(output, runfolder.COMPLETE_MARKER, started) is not None:
                finished_at = time.monotonic()
            continue
        if time.monotonic() - finished_at < grace_s:
            continue
        ended = signal_tree(child.pid, signal.SIGKILL)
        logger.warning("training completed (%s) but its processes had not exited %.0f s later (a hung teardown): "
                       "ended them (%d processes)", output / runfolder.COMPLETE_MARKER, grace_s, ended)
        child.wait()
        return 0


def _finish(record: dict, path: Path, node: NodeContext, exit_code: int) -> int:
    record.update(exit_code=exit_code, ended=time.time())
    runfolder.write_json_atomic(path, record)
    logger.info("node %d: training exited %d; signals seen: %s", node.node_rank, exit_code,
                [s["name"] for s in record["signals"]] or "none")
    # torchrun reports any failed worker as 1, so the outcome lives in the markers; a node that was signalled
    # exits 0 so that srun --kill-on-bad-exit does not cut off ranks still committing the checkpoint.
    return 0 if exit_code == 0 or record["signals"] else exit_code


# --- end -----------------------------------------------------------------------------------------------------

def end(spec: JobSpec, node: NodeContext, srun_status: int, batch_signal: str, *,
        requeue_job=attempts.requeue) -> tuple[int, dict]:
    """Record this attempt's outcome (node 0's launcher may already have closed it and brought the job back);
    bring the job back if nobody did and the evidence asks for it. Returns (exit code, outcome)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a requeue sends SIGTERM to this batch shell
    folder = command.attempt_dir(spec, node)
    closed = (runfolder.read_json(folder / "attempt.json") or {}).get("outcome")
    if closed is not None and closed["kind"] == attempts.CANCELLED:  # node 0 saw the cancel: refine with all nodes
        closed = None
    if closed is not None:  # node 0's launcher closed it already
        logger.info("attempt %s: %s — %s", node.attempt_id, closed["kind"], closed["detail"])
    else:
        job_info = attempts.scontrol_job(node.job_id)
        outcome = attempts.classify(requeue.gather(spec, folder, node.num_nodes, srun_status, batch_signal,
                                           job_info=job_info, restart_count=node.restart_count))
        closed = requeue.close(spec, node, outcome, job_info, requeue=requeue_job, by="the batch shell")
    if closed.get("requeue") or closed["kind"] == attempts.COMPLETED:
        return 0, closed
    return (srun_status or 1), closed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slurm/launch.py", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("begin", "node", "end"))
    parser.add_argument("spec", help="JOB_DIR/job.json")
    parser.add_argument("--srun-status", type=int, default=0)
    parser.add_argument("--batch-signal", default="")
    args = parser.parse_args(argv)
    spec = secrets.reveal(specs.read(args.spec))
    node = slurm_context(dict(os.environ))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s [launch {args.step} node{node.node_rank}] %(levelname)s %(message)s")
    if args.step == "begin":
        return begin(spec, node)
    if args.step == "node":
        watcher = requeue.RequeueWatcher(spec, node).start() if node.node_rank == 0 else None
        try:
            return run_node(spec, node)
        finally:
            if watcher is not None:
                watcher.stop()
    return end(spec, node, args.srun_status, args.batch_signal)[0]


if __name__ == "__main__":
    sys.exit(main())
