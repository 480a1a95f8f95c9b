"""Two real processes under DeepSpeed ZeRO-2 (gloo on CPU): every rank saves and loads its own state, a save
killed halfway is never resumed from, a signal reaching one rank stops both, a truncated shard is skipped,
retention keeps the newest, and export merges the ZeRO partitions. (Plain DDP runs the same Checkpointer in
test_exact_resume.py; the single-process cases are in test_checkpointer.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from easyanimate.training import signals
from easyanimate.training.manifest import read_manifest, verify
from launching import REPO, run

pytestmark = pytest.mark.integration
WORKER = str(REPO / "tests" / "checkpoint" / "ckpt_worker.py")


def worker(mode: str, out: Path, *flags: str) -> tuple[int, str]:
    return run(mode, [WORKER, "--output_dir", str(out), *flags], out.parent)


def result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def zero2_straight(tiny_model_v51, tmp_path_factory) -> tuple[Path, list[str]]:
    """An uninterrupted ZeRO-2 run with synchronous saves: its folder and its final weights' digest per rank."""
    straight = tmp_path_factory.mktemp("zero2") / "straight"
    code, log = worker("deepspeed", straight, "--transformer", str(tiny_model_v51 / "transformer"), "--steps", "6",
                       "--total_limit", "2")
    assert code == 0, log
    return straight, result(straight)["weights"]


def test_zero2_runs_killed_signalled_or_corrupted_end_bitwise_equal_to_an_uninterrupted_one(tiny_model_v51,
                                                                                              zero2_straight,
                                                                                              tmp_path):
    from diffusers import EasyAnimateTransformer3DModel

    from ckpt_worker import weights_sha
    from easyanimate.training.export import export
    mode, model = "deepspeed", ("--transformer", str(tiny_model_v51 / "transformer"))
    straight, expected = zero2_straight
    assert len(set(expected)) == 1  # both ranks hold the same weights
    assert sorted(p.name for p in straight.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    files = read_manifest(straight / "checkpoint-6")["files"]
    assert {"rank_states/rank00000.pt", "rank_states/rank00001.pt", "random_states_0.pkl",
            "random_states_1.pkl"} | {f"pytorch_model/zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
                                      for r in (0, 1)} <= set(files)
    # Export merges both ranks' fp32 partitions into the weights training ended with.
    exported = EasyAnimateTransformer3DModel.from_pretrained(export(straight / "checkpoint-6", tmp_path / "export"))
    assert weights_sha(exported) == expected[0]
    assert weights_sha(EasyAnimateTransformer3DModel.from_pretrained(tiny_model_v51 / "transformer")) != expected[0]

    run_b = tmp_path / "interrupted"
    code, log = worker(mode, run_b, *model, "--steps", "6", "--total_limit", "2", "--die_while_saving", "4")
    assert code != 0
    assert (run_b / ".tmp-checkpoint-4").is_dir() and not (run_b / "checkpoint-4").exists()

    # Restart: the half-written step 4 is ignored; a SIGUSR1 reaching rank 1 alone stops both at step 5.
    code, log = worker(mode, run_b, *model, "--steps", "6", "--total_limit", "2", "--resume", "latest",
                       "--signal_rank1_at", "5")
    assert code != 0, log  # the launcher turns the requeue code into 1: hence the marker
    assert f"resuming from {run_b / 'checkpoint-2'}" in log
    assert json.loads((run_b / "requeue.json").read_text())["step"] == 5
    assert not (run_b / ".tmp-checkpoint-4").exists()

    code, log = worker(mode, run_b, *model, "--steps", "6", "--total_limit", "2", "--resume", "latest")
    assert code == 0, log
    assert f"resuming from {run_b / 'checkpoint-5'}" in log
    assert result(run_b)["weights"] == expected

    # A truncated shard in the newest checkpoint: skipped with a warning, the older one is used.
    shard = run_b / "checkpoint-6" / "pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (run_b / "result.json").unlink()
    code, log = worker(mode, run_b, *model, "--steps", "6", "--total_limit", "2", "--resume", "latest")
    assert code == 0, log
    assert "skipping" in log and "truncated" in log and shard.name in log
    assert f"resuming from {run_b / 'checkpoint-5'}" in log
    assert result(run_b)["weights"] == expected
    assert verify(run_b / "checkpoint-6") == []  # rewritten whole


def test_zero2_background_saves_survive_a_kill_mid_write_and_a_signal_mid_flight_bitwise(tiny_model_v51,
                                                                                         zero2_straight, tmp_path):
    """Periodic saves in the background: rank 1 SIGKILLed on its writer thread halfway through step 4's files
    commits nothing (resume takes step 2, itself a background save); a signal while step 4's save is in flight
    commits 4, then 5, then writes the requeue marker; the run ends with the weights of synchronous saves."""
    mode = "deepspeed"
    flags = ("--transformer", str(tiny_model_v51 / "transformer"), "--steps", "6", "--total_limit", "2",
             "--async_saves")
    straight, expected = zero2_straight
    out = tmp_path / "run"
    code, log = worker(mode, out, *flags, "--die_while_writing", "4")
    assert code != 0 and "is killed while writing the rest" in log, log[-3000:]
    assert (out / ".tmp-checkpoint-4").is_dir() and not (out / "checkpoint-4").exists()
    assert verify(out / "checkpoint-2") == []

    code, log = worker(mode, out, *flags, "--resume", "latest", "--signal_rank1_at", "5", "--slow_write", "3")
    assert code != 0, log
    assert f"resuming from {out / 'checkpoint-2'}" in log
    assert log.index("trained step 5 (background save of step 4 in flight)") < \
        log.index(f"checkpoint {out / 'checkpoint-4'} committed") < log.index(f"checkpoint {out / 'checkpoint-5'}")
    four, five = read_manifest(out / "checkpoint-4"), read_manifest(out / "checkpoint-5")
    marker = json.loads((out / "requeue.json").read_text())
    assert four["time"] < five["time"] < marker["time"] and marker["step"] == 5
    assert verify(out / "checkpoint-4") == [] and verify(out / "checkpoint-5") == []
    # The background save of step 4 holds what the uninterrupted run's synchronous save of step 4 holds (model,
    # ZeRO partitions, scheduler; the worker leaves python's and numpy's generators unseeded).
    assert sorted(four["files"]) == sorted(read_manifest(straight / "checkpoint-4")["files"])
    for relpath in four["files"]:
        if relpath.startswith("pytorch_model/") or relpath == "custom_checkpoint_0.pkl":
            assert repr(torch.load(out / "checkpoint-4" / relpath, weights_only=False)) == \
                repr(torch.load(straight / "checkpoint-4" / relpath, weights_only=False)), relpath

    code, log = worker(mode, out, *flags, "--resume", "latest")
    assert code == 0, log
    assert f"resuming from {out / 'checkpoint-5'}" in log
    assert result(out)["weights"] == expected


def test_requeue_code_is_distinct_from_failures():
    assert signals.REQUEUE_EXIT_CODE not in (0, 1, 2, 124, 137, 143)



def test_sigusr1_to_the_whole_launch_tree_ends_in_a_committed_checkpoint_when_the_agent_forwards_it(
        tiny_model_v51, tmp_path):
    """slurmstepd signals every process, torchrun's agent included; unless told to handle USR1
    (PET_SIGNALS_TO_HANDLE, read by `accelerate launch`), the agent dies of it at once (exit 138)."""
    import signal
    import time

    from launching import start
    out = tmp_path / "run"
    launched = start("plain", [WORKER, "--output_dir", str(out), "--transformer", str(tiny_model_v51 / "transformer"),
                               "--steps", "10000", "--save_every", "20", "--step_seconds", "0.05"], tmp_path,
                     extra_env={"PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"})
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-20").exists() and time.monotonic() < deadline and launched.process.poll() is None:
        time.sleep(0.05)
    launched.signal_all(signal.SIGUSR1)
    code = launched.wait(120)
    assert code == 1, launched.text()[-3000:]  # torchrun reports the workers' requeue code as a failure...
    marker = json.loads((out / "requeue.json").read_text())  # ...so the marker is the durable record
    assert marker["signal"] == "SIGUSR1" and marker["step"] > 20
    assert verify(Path(marker["checkpoint"])) == []
