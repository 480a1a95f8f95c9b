"""The container path for real, through the stand-in runtime (tests/slurm/apptainer/main.go: a Go program, so
ignored USR1/USR2 come back as "terminate" in the container as with the real apptainer): the launch chain
survives every preemption signal, a missing runtime or image is a configuration error, never requeued."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import standin_runtime
from slurm_jobs import REPO

from slurm import launch

WAITER = ("import os, sys, time\n"
          "open(sys.argv[1], 'w').close()\n"
          "while not os.path.exists(sys.argv[2]): time.sleep(0.05)\n")


@pytest.fixture(scope="session")
def standin_bin(tmp_path_factory) -> Path:
    reason = standin_runtime.missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("standin-runtime")
    standin_runtime.build(folder / "bin", folder / "gocache")
    return folder / "bin"


@pytest.fixture(scope="session")
def standin_image(tmp_path_factory) -> Path:
    return standin_runtime.make_image(tmp_path_factory.mktemp("image") / "easyanimate.sif")


def _ignore_usr_signals():  # what run_node does before it starts the runtime
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def test_launch_chain_in_the_container_survives_usr1_and_usr2_sent_to_every_process(standin_bin, standin_image,
                                                                                     tmp_path):
    ready, go = tmp_path / "ready", tmp_path / "go"
    argv = [str(standin_bin / "apptainer"), "exec", "--cleanenv", "--pwd", str(REPO), str(standin_image),
            "python", "slurm/inside.py", "--", "python", "-c", WAITER, str(ready), str(go)]
    chain = subprocess.Popen(argv, preexec_fn=_ignore_usr_signals, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and chain.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    for sig in (signal.SIGUSR1, signal.SIGUSR2):  # as slurmstepd does: every process of the step
        for pid in launch.process_tree(chain.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    time.sleep(0.5)
    go.touch()
    _, err = chain.communicate(timeout=60)
    assert chain.returncode == 0, f"the chain died (exit {chain.returncode}):\n{err}"
    assert "runtime: apptainer" in err and "ignored: SIGUSR1 SIGUSR2" in err


def test_node_report_decodes_sigign_and_sigcgt_masks():
    from slurm import inside
    # SigIgn bits 10 and 12 (USR1, USR2), SigCgt bit 15 (TERM) and bit 2 (INT).
    status = "Name:\tpython\nSigIgn:\t0000000000000a00\nSigCgt:\t0000000000004002\n"
    assert inside.dispositions(status) == {"ignored": ["SIGUSR1", "SIGUSR2"], "caught": ["SIGTERM", "SIGINT"],
                                           "default": ["SIGHUP"]}
