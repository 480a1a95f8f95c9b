"""First process inside the container (or on the host with --container none): make the launch chain survive
SLURM's warning signals, log the environment the training processes will really see, then become the launcher.

Signals: the launcher ignores SIGUSR1/SIGUSR2 before it starts the container, but Apptainer's runtime is a Go
program: Go handles every signal itself (an inherited "ignore" survives only on SIGHUP and SIGINT) and a handled
signal is reset to its default at exec. So in here USR1/USR2 are back at "terminate", and the torchrun agent
under ``accelerate launch`` would die of the time-limit warning. This process sets them to ignored again; the
ignore survives exec into the launcher and its workers, and the trainer installs its own handlers.
SIGTERM keeps its default: the torchrun agent handles it (forwards, waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT), and
a one-process job runs the trainer itself, which handles it.

Apptainer lets variables set in the image beat the host's, so only a report from in here shows the effective
NCCL values (secret values read ``<redacted>``). Usage: ``python slurm/inside.py -- COMMAND...``. Standard library
only (and ``easyanimate.redact``, itself standard library).
"""

import os
import signal
import socket
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easyanimate import redact  # noqa: E402

REPORTED_PREFIXES = ("NCCL_", "TORCH_NCCL_", "TORCH_FR_", "TORCH_ELASTIC_", "FI_", "DEEPSPEED_", "DS_ACCELERATOR",
                     "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "SLURM_JOB_ID", "SLURM_NODEID",
                     "SLURM_RESTART_COUNT", "EASYANIMATE_", "PYTHON")
# The chain's own processes (runtime, this one, accelerate, torchrun's agent) must outlive these.
CHAIN_IGNORES = (signal.SIGUSR1, signal.SIGUSR2)
# Dispositions worth a line in the node log: the preemption set and the two Go leaves alone.
WATCHED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)


def dispositions(status_text: str) -> dict[str, list[str]]:
    """Watched signals by disposition, from /proc/PID/status's SigIgn/SigCgt masks (bit N-1 is signal N)."""
    masks = {key: int(value, 16) for key, _, value in (line.partition(":\t") for line in status_text.splitlines())
             if key in ("SigIgn", "SigCgt")}
    found: dict[str, list[str]] = {"ignored": [], "caught": [], "default": []}
    for sig in WATCHED:
        bit = 1 << (sig - 1)
        kind = "ignored" if masks.get("SigIgn", 0) & bit else "caught" if masks.get("SigCgt", 0) & bit else "default"
        found[kind].append(sig.name)
    return found


def disposition_line(when: str) -> str:
    try:
        with open("/proc/self/status") as status:
            found = dispositions(status.read())
    except OSError:
        return f"signals {when}: /proc/self/status unreadable"
    return f"signals {when}: " + "; ".join(f"{kind}: {' '.join(names) or '-'}" for kind, names in found.items())


def report(environ: dict[str, str]) -> list[str]:
    runtime = "apptainer " + environ["APPTAINER_CONTAINER"] if "APPTAINER_CONTAINER" in environ else "host"
    lines = [f"runtime: {runtime}; python: {sys.executable}"]
    shown = redact.mapping({key: value for key, value in environ.items() if key.startswith(REPORTED_PREFIXES)})
    lines += [f"{key}={shown[key]}" for key in sorted(shown)]
    return lines


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--" or len(argv) < 2:
        sys.stderr.write("usage: python slurm/inside.py -- COMMAND...\n")
        return 2
    lines = [disposition_line("at entry")]
    for sig in CHAIN_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    lines += [disposition_line("for the launcher")] + report(dict(os.environ))
    host = socket.gethostname()
    sys.stderr.write("".join(f"[inside {host}] {line}\n" for line in lines))
    sys.stderr.flush()
    os.execvp(argv[1], argv[1:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
