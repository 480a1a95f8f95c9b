"""A real SLURM on this machine: munged, slurmctld and four slurmd (node1..node4), all state in one folder.

Installs nothing (tests/setup_system.sh does); starts the daemons from a fresh folder, stops them by their pid
files only. Two partitions: ``debug`` (default, preemptible: PreemptMode=REQUEUE, GraceTime) and ``high``
(PriorityTier=10) whose jobs preempt it; ``cancel`` is preempted the same way but with PreemptMode=CANCEL (the job
is ended, not requeued). ``cred_expire=5`` and 1 s scheduler intervals make a requeued job run
again in ~6 s instead of 121 s. Developers: ``python tests/slurm/cluster.py up|down [FOLDER]`` then
``export SLURM_CONF=FOLDER/etc/slurm.conf``. Several clusters can run side by side (one per developer work tree):
``EASYANIMATE_TEST_CLUSTER_SLOT=N`` shifts the daemons' ports and the first job id (so MASTER_PORTs differ too).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

NODES = ("node1", "node2", "node3", "node4")
HOSTS_MARK = "# easyanimate-test-cluster"
SLOT = int(os.environ.get("EASYANIMATE_TEST_CLUSTER_SLOT", "0"))
CTLD_PORT = 16817 + 10 * SLOT
SLURMD_PORTS = f"{16001 + 10 * SLOT}-{16004 + 10 * SLOT}"
FIRST_JOB_ID = 1 + 1000 * SLOT
GRACE_S = 30

SLURM_CONF = """\
ClusterName=easyanimate-ci
FirstJobId={first_job_id}
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket,cred_expire=5
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool/%n
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd-%n.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=600
MailProg=/bin/true
SchedulerParameters=bf_interval=1,sched_interval=1
SlurmctldParameters=preempt_send_user_signal
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
GresTypes=gpu
NodeName=node[1-4] NodeHostname=localhost NodeAddr=127.0.0.1 Port={slurmd_ports} CPUs=2 RealMemory=4000 Gres=gpu:8 State=UNKNOWN
PartitionName=debug Nodes=node[1-4] Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime={grace}
PartitionName=high Nodes=node[1-4] MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
PartitionName=cancel Nodes=node[1-4] MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=CANCEL GraceTime={grace}
"""


def available() -> str | None:
    """Why the cluster cannot start here, or None."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        return f"SLURM not installed ({', '.join(missing)} missing): run tests/setup_system.sh as root"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    return None


class Cluster:
    def __init__(self, base: Path):
        self.base = Path(base).resolve()
        self.conf = self.base / "etc" / "slurm.conf"
        self._added_hosts_line = False

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    # --- up -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> "Cluster":
        for sub in ("state", "spool"):  # a fresh cluster: no node states or jobs from an earlier run
            shutil.rmtree(self.base / sub, ignore_errors=True)
        for sub in ("etc", "munge", "state", "spool", "run", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "munge").chmod(0o755)  # munged warns about a 700 socket folder
        self.conf.write_text(SLURM_CONF.format(base=self.base, ctld_port=CTLD_PORT, slurmd_ports=SLURMD_PORTS,
                                               grace=GRACE_S, first_job_id=FIRST_JOB_ID))
        # Count-only GPUs (no device files): enough for sbatch --test-only of 8-GPU scripts; nothing runs on them.
        (self.base / "dev").mkdir(exist_ok=True)
        for i in range(8):
            (self.base / "dev" / f"gpu{i}").touch()
        (self.base / "etc" / "gres.conf").write_text(f"AutoDetect=off\nName=gpu File={self.base}/dev/gpu[0-7]\n")
        for node in NODES:
            (self.base / "spool" / node).mkdir(exist_ok=True)
        self._start_munge()
        self._added_hosts_line = _add_hosts_line()
        subprocess.run(["slurmctld", "-f", str(self.conf)], env=self.env, check=True)
        for node in NODES:
            subprocess.run(["slurmd", "-f", str(self.conf), "-N", node], env=self.env, check=True)
        self._wait_idle(timeout)
        return self

    def _start_munge(self) -> None:
        key = self.base / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        m = self.base / "munge"
        subprocess.run(["munged", "--force", f"--socket={m}/munge.socket", f"--key-file={key}",
                        f"--log-file={self.base}/log/munged.log", f"--pid-file={self.base}/run/munged.pid",
                        f"--seed-file={m}/munge.seed"], check=True)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T", check=False).stdout
            if states.count("idle") == len(NODES):
                return
            time.sleep(0.2)
        raise RuntimeError(f"test cluster: nodes not idle after {timeout}s:\n{states}\n"
                           f"see {self.base / 'log'}")

    # --- down -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.conf.exists():
            self.run("scancel", "--full", "--signal=KILL", "--user=root", check=False)
        daemons = [(f"slurmd-{n}.pid", "slurmd") for n in NODES] + [("slurmctld.pid", "slurmctld"),
                                                                     ("munged.pid", "munged")]
        for pid_file, name in daemons:
            _stop_by_pid_file(self.base / "run" / pid_file, name)
        if self._added_hosts_line:  # another cluster may still need the names
            _remove_hosts_line()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # PID 1 here reaps zombies slowly; a zombie is dead enough


def _stop_by_pid_file(pid_file: Path, name: str, timeout: float = 10) -> None:
    try:
        pid = int(pid_file.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ValueError):
        return
    if comm != name:  # stale pid file: that pid belongs to someone else now
        return
    os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, 9)
    pid_file.unlink(missing_ok=True)


def _hosts() -> Path:
    return Path(os.environ.get("EASYANIMATE_HOSTS_FILE", "/etc/hosts"))


def _add_hosts_line() -> bool:
    """node1..node4 must resolve (MASTER_ADDR is the first node's name). True if this call added them."""
    if all(_resolves(n) for n in NODES):
        return False
    text = _hosts().read_text()
    if HOSTS_MARK in text:
        return False
    prefix = "" if text.endswith("\n") or not text else "\n"
    _hosts().write_text(f"{text}{prefix}127.0.0.1 {' '.join(NODES)} {HOSTS_MARK}\n")
    return True


def _remove_hosts_line() -> None:
    text = _hosts().read_text()
    if HOSTS_MARK in text:
        _hosts().write_text("".join(line for line in text.splitlines(keepends=True) if HOSTS_MARK not in line))


def _resolves(name: str) -> bool:
    try:
        socket.gethostbyname(name)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    action = sys.argv[1] if len(sys.argv) > 1 else ""
    folder = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/easyanimate-slurm")
    if action == "up":
        reason = available()
        if reason:
            sys.exit(reason)
        Cluster(folder).start()
        print(f"export SLURM_CONF={folder / 'etc' / 'slurm.conf'}")
    elif action == "down":
        Cluster(folder).stop()
    else:
        sys.exit("usage: python tests/slurm/cluster.py up|down [FOLDER]")
