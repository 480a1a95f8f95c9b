"""The end of ``bash slurm/demo.sh``: where to look; and ``bash slurm/demo.sh --cluster``: the whole product on one
machine (4-node test SLURM, submit, one preemption by a higher-priority job, requeue, finish, status with the
attempt boundary in the curves PNG). The cluster is started in DEMO/cluster and stopped again, whatever happens.

    python slurm/demo_cluster.py DEMO_DIR -- TRAINING_FLAGS     (what demo.sh --cluster runs)
    python slurm/demo_cluster.py --where JOB_DIR                where the pictures of a demo run are
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python slurm/demo_cluster.py`: make the repository importable
    # replace, not prepend: the script's own folder would shadow the standard library (slurm/secrets.py)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from slurm import status  # noqa: E402
from slurm import spec as specs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NODES = 4
STEPS = 30
PREEMPT_AFTER_STEP = 6
# A job that needs every node of the higher-priority partition: SLURM requeues the demo to make room.
PREEMPTOR = ["sbatch", "-p", "high", "-N", str(NODES), "--exclusive", "-o", "/dev/null", "--wrap", "sleep 2"]


def where_to_look(job_dir: Path) -> str:
    output = Path(specs.read(job_dir / "job.json").output_dir)
    videos = sorted(output.glob("sample/step-*.mp4"), key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)])
    node0 = [p for p in status.log_paths(job_dir) if p.name.endswith("_0_log.err")]
    rows = [("status", f"python slurm/submit.py status {job_dir}", "attempts, checkpoint, last step, loss, speed, ETA"),
            ("curves", str(job_dir / "curves.png"), "loss raw + smoothed, lr, samples/s; dashed: an attempt resumed"),
            ("validation", str(videos[-1]) if videos else f"{output}/sample/ (none yet)",
             "control | reference image | generated"),
            ("progress", str(node0[-1]) if node0 else f"{job_dir}/logs/", "`step N/TOTAL` lines of rank 0"),
            ("tensorboard", f"tensorboard --logdir {output / 'logs'}", "the same metrics, validation frames")]
    return "\nWhere to look:\n" + "".join(f"  {name:<12} {what}\n  {'':<12}   ({note})\n" for name, what, note in rows)


def _run(argv: list[str], env: dict, timeout: float = 120) -> str:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=True).stdout


def run_on_cluster(demo: Path, flags: list[str]) -> int:
    from tests.slurm.cluster import Cluster, available
    from tests.slurm.slurm_jobs import trained_step, wait_finished, wait_for

    reason = available()
    if reason:
        print(f"demo --cluster: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    cluster = Cluster(demo / "cluster")
    print(f"starting the 4-node test cluster in {cluster.base} ...", flush=True)
    cluster.start()
    os.environ["SLURM_CONF"] = str(cluster.conf)  # status() below asks scontrol in this process
    try:
        env = cluster.env
        job_dir = (demo / "cluster-run").resolve()
        shutil.rmtree(job_dir, ignore_errors=True)  # a fresh run (a kept one would resume at its last step)
        submit = [sys.executable, "slurm/submit.py", "--job", "configs/jobs/demo.yaml", "--nodes", str(NODES),
                  "--job-dir", str(job_dir), "--", *flags, f"--max_train_steps={STEPS}", "--checkpointing_steps=10",
                  f"--validation_steps={STEPS}"]
        print("$ " + " ".join(submit[1:]), flush=True)
        out = _run(submit, env)
        print(out, end="")
        job_id = re.search(r"submitted job (\d+)", out).group(1)
        output = Path(specs.read(job_dir / "job.json").output_dir)
        def logged_step() -> int:
            try:
                return trained_step(output)
            except ValueError:  # the line being written
                return 0
        step = wait_for(lambda: logged_step() >= PREEMPT_AFTER_STEP and logged_step(), 600,
                        f"the demo to reach step {PREEMPT_AFTER_STEP}", every=1)
        print(f"training at step {step}: preempting it with a higher-priority job\n$ {' '.join(PREEMPTOR)}",
              flush=True)
        _run(PREEMPTOR, env)
        state = wait_finished(job_id, 900)
        print(f"job {job_id}: {state}\n$ python slurm/submit.py status {job_dir}", flush=True)
        report = status.status(job_dir)
        print(status.format_status(report), end="")
        print(where_to_look(job_dir))
        kinds = ", ".join(row["outcome"] for row in report["attempts"])
        print(f"attempts: {kinds}; the demo took {time.monotonic() - started:.0f} s")
        return 0 if state == "COMPLETED" else 1
    finally:
        print(f"stopping the test cluster in {cluster.base}", flush=True)
        cluster.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--where"] and len(argv) == 2:
        print(where_to_look(Path(argv[1])))
        return 0
    if len(argv) < 2 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    return run_on_cluster(Path(argv[0]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
