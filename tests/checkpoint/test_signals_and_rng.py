"""Preemption flag, run-folder markers, DataLoader workers surviving SLURM's signals, and RNG capture."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from easyanimate.training import rng_state, signals


@pytest.fixture
def handler():
    installed = signals.PreemptionHandler().install()
    yield installed
    installed.uninstall()


def test_each_preemption_signal_sets_the_flag_and_keeps_the_process_alive(handler):
    assert not handler.stop_requested()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert handler.received == "SIGUSR2" and handler.stop_requested()
    os.kill(os.getpid(), signal.SIGTERM)  # a second signal (e.g. during the save) changes nothing
    assert handler.received == "SIGUSR2"


def test_uninstall_restores_the_previous_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    handler = signals.PreemptionHandler().install()
    assert signal.getsignal(signal.SIGUSR1) != before
    handler.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_markers_record_step_signal_and_checkpoint(handler, tmp_path):
    os.kill(os.getpid(), signal.SIGUSR1)
    handler.write_requeue_marker(tmp_path, 12, tmp_path / "checkpoint-12")
    marker = json.loads((tmp_path / "requeue.json").read_text())
    assert (marker["step"], marker["signal"], marker["checkpoint"]) == (12, "SIGUSR1", str(tmp_path / "checkpoint-12"))
    (tmp_path / "checkpoint-20").mkdir()
    signals.write_complete_marker(tmp_path, 20)
    assert json.loads((tmp_path / "complete.json").read_text())["checkpoint"] == str(tmp_path / "checkpoint-20")
    signals.clear_requeue_marker(tmp_path)
    assert not (tmp_path / "requeue.json").exists() and not (tmp_path / "complete.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-20"]  # no temp files left by the atomic writes


class SignalsItself(Dataset):
    """Each item signals the worker loading it, as slurmstepd signals every process of the step."""

    def __init__(self, signum: int):
        self.signum = signum

    def __len__(self):
        return 2

    def __getitem__(self, index):
        os.kill(os.getpid(), self.signum)
        return index


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_dataloader_worker_with_the_worker_init_fn_survives_slurm_signals(handler, signum):
    loader = DataLoader(SignalsItself(signum), num_workers=1, worker_init_fn=signals.worker_init_fn)
    assert [int(batch) for batch in loader] == [0, 1]


def test_dataloader_worker_dies_of_sigterm_even_though_the_main_process_handles_it(handler):
    # torch's worker set-up installs a C SIGTERM handler that re-raises any SIGTERM not sent by the parent.
    loader = DataLoader(SignalsItself(signal.SIGTERM), num_workers=1, timeout=60)
    with pytest.raises(RuntimeError, match="killed by signal|exited unexpectedly"):
        list(loader)


def test_dataloader_worker_without_a_handler_dies_of_sigusr1():
    # The default action of USR1/USR2 is to terminate (a spawned worker, or one forked before install()).
    loader = DataLoader(SignalsItself(signal.SIGUSR1), num_workers=1, timeout=60)
    with pytest.raises(RuntimeError, match="killed by signal|exited unexpectedly"):
        list(loader)


def test_rng_capture_restore_replays_every_stream():
    generator = torch.Generator().manual_seed(3)
    state = rng_state.capture({"noise": generator})

    def draw():
        return (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=generator).tolist())

    first = draw()
    rng_state.restore(state, {"noise": generator})
    assert draw() == first


def test_rng_restore_names_a_generator_the_checkpoint_lacks():
    state = rng_state.capture({"noise": torch.Generator()})
    with pytest.raises(KeyError, match="timesteps"):
        rng_state.restore(state, {"timesteps": torch.Generator()})
