"""First process inside the container (or on the host with --container none): log the environment the training
processes will really see, then become the launcher.

Apptainer lets variables set in the image beat the host's, so only a report from in here shows the effective
NCCL values. Usage: ``python slurm/inside.py -- COMMAND...``. Standard library only, no project imports.
"""

import os
import socket
import sys

REPORTED_PREFIXES = ("NCCL_", "TORCH_NCCL_", "TORCH_FR_", "TORCH_ELASTIC_", "FI_", "DEEPSPEED_", "DS_ACCELERATOR",
                     "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "SLURM_JOB_ID", "SLURM_NODEID",
                     "SLURM_RESTART_COUNT")


def report(environ: dict[str, str]) -> list[str]:
    runtime = "apptainer " + environ["APPTAINER_CONTAINER"] if "APPTAINER_CONTAINER" in environ else "host"
    lines = [f"[inside {socket.gethostname()}] runtime: {runtime}; python: {sys.executable}"]
    lines += [f"[inside {socket.gethostname()}] {key}={environ[key]}"
              for key in sorted(environ) if key.startswith(REPORTED_PREFIXES)]
    return lines


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--" or len(argv) < 2:
        sys.stderr.write("usage: python slurm/inside.py -- COMMAND...\n")
        return 2
    sys.stderr.write("\n".join(report(dict(os.environ))) + "\n")
    sys.stderr.flush()
    os.execvp(argv[1], argv[1:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
