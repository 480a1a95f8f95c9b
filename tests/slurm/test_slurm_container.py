"""The container path for real, through the stand-in runtime (tests/slurm/apptainer/main.go: a Go program, so
ignored USR1/USR2 come back as "terminate" in the container as with the real apptainer): the launch chain
survives every preemption signal, a missing runtime or image is a configuration error, never requeued."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import standin_runtime
from slurm_jobs import REPO

from easyanimate import runfolder
from slurm import launch

WAITER = ("import os, sys, time\n"
          "open(sys.argv[1], 'w').close()\n"
          "while not os.path.exists(sys.argv[2]): time.sleep(0.05)\n")


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
        launch.signal_tree(chain.pid, sig)
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


def _spec(tmp_path: Path, image: str | None = None, **options):
    """A one-node CPU job; ``image`` is set after submit-time checks (a node may lack what the submitter saw)."""
    from slurm import jobs
    present = standin_runtime.make_image(tmp_path / "present.sif")
    values = {"job_dir": str(tmp_path / "job"), "container": "apptainer", "image": str(present),
              "gpus_per_node": 0, "nodes": 1, "processes_per_node": 1, "deepspeed": False, **options}
    if values["container"] == "none":
        values["image"] = None
    spec = jobs.build_spec(values, job_file=str(REPO / "configs/jobs/demo.yaml"), cwd=REPO)
    spec.image = image if image is not None else spec.image
    return spec


def _node(rank: int = 0, nodes: int = 1):
    from slurm.command import NodeContext
    return NodeContext(job_id="77", num_nodes=nodes, node_rank=rank, master_addr="127.0.0.1", master_port="20077")


@pytest.mark.parametrize("case", ["no runtime", "no image"])
def test_missing_runtime_or_image_is_a_configuration_error_never_requeued(case, standin_bin, standin_image,
                                                                           tmp_path, monkeypatch):
    from slurm import attempts, command, requeue
    image = tmp_path / "missing.sif" if case == "no image" else standin_image
    spec = _spec(tmp_path, image=str(image))
    monkeypatch.setenv("PATH", standin_runtime.path_with(standin_bin if case == "no image" else None))
    assert launch.run_node(spec, _node()) == command.CONFIG_ERROR_EXIT
    folder = command.attempt_dir(spec, _node())
    outcome = attempts.classify(requeue.gather(spec, folder, 1, command.CONFIG_ERROR_EXIT, "", job_info={}))
    assert outcome.kind == attempts.CONFIG_ERROR and not outcome.requeue
    assert ("apptainer nor singularity" if case == "no runtime" else "does not exist") in outcome.detail


def test_singularity_is_used_where_apptainer_is_absent(tmp_path):
    from slurm import command
    found = {"singularity": "/opt/singularity/bin/singularity"}
    assert command.find_runtime(found.get) == "/opt/singularity/bin/singularity"
    assert command.find_runtime({**found, "apptainer": "/usr/bin/apptainer"}.get) == "/usr/bin/apptainer"
    passed = command.passthrough_env({"SLURM_JOB_ID": "5", "PYTHONPATH": "/home/u/lib"}, "/opt/bin/singularity")
    assert passed == {"SINGULARITYENV_SLURM_JOB_ID": "5"}


@pytest.mark.parametrize("name", ["apptainer", "singularity"])
def test_the_container_sees_slurm_and_credentials_but_no_host_python_paths(name, standin_bin, standin_image,
                                                                           tmp_path, monkeypatch):
    from slurm import command
    bin_dir = tmp_path / "bin"  # a node that has only this runtime
    bin_dir.mkdir()
    os.symlink(standin_bin / "apptainer", bin_dir / name)
    monkeypatch.setenv("PATH", standin_runtime.path_with(bin_dir))
    runtime = command.find_runtime()
    assert Path(runtime).name == name
    spec = _spec(tmp_path, image=str(standin_image), env={"FROM_ENV_FILE": "1"})
    node = _node()
    host = {**os.environ, "PYTHONPATH": "/host/lib", "PYTHONHOME": "/host", "SLURM_JOB_ID": "77",
            "WANDB_API_KEY": "k", "CUDA_HOME": "/host/cuda"}
    env_file = command.env_file(spec, node)
    env_file.parent.mkdir(parents=True)
    env_file.write_text(command.env_file_text(command.training_env(spec)))
    argv = command.container_argv(spec, node, runtime) + [
        "python", "-c", "import json, os, site; print(json.dumps([dict(os.environ), site.ENABLE_USER_SITE]))"]
    out = subprocess.run(argv, env={**host, **command.passthrough_env(host, runtime)}, capture_output=True,
                         text=True, check=True).stdout
    inside, user_site = json.loads(out)
    assert not {"PYTHONPATH", "PYTHONHOME", "CUDA_HOME"} & set(inside) and user_site is False
    assert inside["SLURM_JOB_ID"] == "77" and inside["WANDB_API_KEY"] == "k" and inside["FROM_ENV_FILE"] == "1"
    assert inside["PYTHONNOUSERSITE"] == "1" and inside["PATH"].startswith(str(Path(sys.executable).parent))


def test_one_process_without_deepspeed_runs_the_trainer_without_accelerates_simple_launcher(tmp_path):
    from slurm import command
    spec = _spec(tmp_path, container="none")
    argv = command.accelerate_argv(spec, _node())
    assert argv[:2] == [spec.train_python, spec.entry] and "accelerate.commands.launch" not in argv
    assert command.launcher_env(spec, _node())["ACCELERATE_USE_CPU"] == "True"
    for many in (_spec(tmp_path, container="none", deepspeed=True),
                 _spec(tmp_path, container="none", processes_per_node=2)):
        assert "accelerate.commands.launch" in command.accelerate_argv(many, _node())
    assert "accelerate.commands.launch" in command.accelerate_argv(spec, _node(nodes=2))


def test_a_taken_master_port_is_skipped_and_every_node_uses_the_one_node0_chose(tmp_path):
    taken = socket.socket()
    taken.bind(("", 0))
    taken.listen()
    port = taken.getsockname()[1]
    node0 = launch.agree_master_port(dataclasses.replace(_node(0, 2), master_port=str(port)), tmp_path)
    taken.close()
    assert int(node0.master_port) > port
    node1 = launch.agree_master_port(_node(1, 2), tmp_path, timeout_s=5)
    assert node1.master_port == node0.master_port
    # A node signalled while it waits for node 0 stops waiting (run_node then starts nothing).
    waiting = launch.agree_master_port(_node(1, 2), tmp_path / "empty", timeout_s=60, stop=lambda: True)
    assert waiting == _node(1, 2)


# --- on the test cluster ----------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_one_process_job_in_the_container_survives_sigterm_with_a_committed_save(container_env, standin_image,
                                                                               tmp_path):
    import slurm_jobs as sj
    options = sj.standin_options(tmp_path / "job", nodes=1, processes_per_node=1, container="apptainer",
                                 image=str(standin_image), env={"STANDIN_SAVE_S": "1.5", "STANDIN_STEP_S": "0.2"})
    spec, job_id = sj.submit(options, ["--max_train_steps=40", "--checkpointing_steps=100"])
    job_dir, output = Path(spec.job_dir), Path(spec.output_dir)
    sj.wait_for(lambda: (output / "ranks" / "rank0.json").is_file() and sj.running_attempt(job_dir, 0), 120,
                "the trainer to start")
    time.sleep(1.5)
    # SIGTERM to every process of the step, SIGKILL after KillWait (5 s): the save (1.5 s here) must fit in that.
    sj.run("scontrol", "requeue", job_id)
    assert sj.wait_finished(job_id, 200) == "COMPLETED", sj.status_text(job_dir)
    first, second = sj.attempt_records(job_dir)
    node = json.loads((job_dir / "attempts" / f"{job_id}.0" / "node0.json").read_text())
    # The chain waited for the save: the node saw the trainer's requeue exit, not its own launcher die of TERM,
    # and the attempt was classified by its own end step, not settled afterwards by the next attempt.
    assert node["signals"][0]["name"] == "TERM" and node["exit_code"] == runfolder.REQUEUE_EXIT_CODE, node
    assert first["outcome"]["kind"] == "preempted", sj.status_text(job_dir)
    assert "requeued by SLURM:" not in first["outcome"]["detail"], first["outcome"]
    saved = first["outcome"]["step"]
    assert saved and (output / f"checkpoint-{saved}" / "manifest.json").is_file()  # the 1.5 s save committed
    assert second["resume_from"]["step"] == saved and second["outcome"]["kind"] == "completed"
    assert "accelerate.commands.launch" not in node["argv"]


@pytest.mark.integration
@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_a_node_without_the_container_runtime_fails_the_job_as_a_configuration_error(slurm_env, standin_image,
                                                                                     tmp_path, monkeypatch):
    import slurm_jobs as sj
    monkeypatch.setenv("PATH", standin_runtime.path_with(None))
    options = sj.standin_options(tmp_path / "job", container="apptainer", image=str(standin_image))
    spec, job_id = sj.submit(options, ["--max_train_steps=4"])
    assert sj.wait_finished(job_id, 90) == "FAILED", sj.status_text(Path(spec.job_dir))
    [record] = sj.attempt_records(Path(spec.job_dir))
    assert record["outcome"]["kind"] == "config_error" and not record["outcome"]["requeue"]
    assert "apptainer nor singularity" in record["outcome"]["detail"]
    assert sj.attempts.scontrol_job(job_id)["Restarts"] == "0"


@pytest.mark.integration
@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_demo_job_in_the_container_preempted_and_requeued_ends_with_the_host_runs_weights(
        container_env, standin_image, tmp_path, tiny_model_v51, demo_data):
    """The real trainer (tiny V5.1, DeepSpeed ZeRO-2 on CPU, two nodes) through the stand-in runtime: a partition
    preemption (USR2, then TERM after GraceTime) and an scontrol requeue (TERM); the launch chains survive both,
    and the final weights equal, bit for bit, an uninterrupted run on the host."""
    import slurm_jobs as sj
    import torch
    from test_slurm_e2e import DEMO_JOB, demo_flags, interrupt_when_training, weights
    steps = 36
    flags = demo_flags(tiny_model_v51, demo_data) + [f"--max_train_steps={steps}", "--checkpointing_steps=12"]
    # One compile cache for both runs: DeepSpeed's CPU op is built by the first job, not by each (and not in a
    # ~/.cache shared with every other checkout on the machine).
    common = {"nodes": 2, "collective_timeout_min": 3, "cache_dir": str(tmp_path / "cache")}
    reference, ref_id = sj.submit({**common, "job_dir": str(tmp_path / "host")}, flags, job_file=DEMO_JOB)
    assert sj.wait_finished(ref_id, 300) == "COMPLETED", sj.status_text(Path(reference.job_dir))

    spec, job_id = sj.submit({**common, "job_dir": str(tmp_path / "container"), "container": "apptainer",
                              "image": str(standin_image)}, flags, job_file=DEMO_JOB)
    job_dir, output = Path(spec.job_dir), Path(spec.output_dir)
    # The preemption last (as in test_slurm_e2e): a requeued attempt could otherwise start before the
    # preempting job and be preempted again before its nodes report.
    interruptions = [["scontrol", "requeue", job_id],
                     ["sbatch", "-p", "high", "-N", "4", "--exclusive", "-o", "/dev/null", "--wrap", "sleep 1"]]
    for n, action in enumerate(interruptions):
        interrupt_when_training(job_dir, output, n, action)
    assert sj.wait_finished(job_id, 400) == "COMPLETED", sj.status_text(job_dir)

    records = sj.attempt_records(job_dir)
    assert [r["outcome"]["kind"] for r in records] == ["preempted", "preempted", "completed"], sj.status_text(job_dir)
    preempted = [json.loads(p.read_text()) for p in sorted((job_dir / "attempts" / f"{job_id}.1").glob("node*.json"))]
    assert [n["signals"][0]["name"] for n in preempted] == ["USR2", "USR2"]  # preemption warns with --signal
    # torchrun reports the trainer's requeue exit (75) as 1; a launch chain killed by USR2 would show 140 (128+12).
    assert [n["exit_code"] for n in preempted] == [1, 1], preempted
    for before, after in zip(records, records[1:]):
        assert after["resume_from"]["step"] == before["outcome"]["step"] > 0
    log = (job_dir / "logs").glob("*_0_log.err")
    assert "signals for the launcher: ignored: SIGUSR1 SIGUSR2" in "".join(p.read_text() for p in log)
    got, want = weights(output), weights(Path(reference.output_dir))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), "container run's weights differ from the host run's"
