"""Secrets: redaction rules (unit) and, on the test cluster, a job whose --env secret, shell-taken secret and
--hub_token reach the trainer while appearing in no output, no log, no file anyone else can read and no command line
of the launch chain on the nodes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from easyanimate import redact
from slurm import jobs, secrets
from slurm import spec as specs

import slurm_jobs as sj
from slurm_jobs import REPO


def test_secret_names_are_redacted_and_numbers_never_are():
    env = redact.mapping({"WANDB_API_KEY": "abc", "HF_TOKEN": "hf_x", "DB_PASSWORD": "pw", "NCCL_DEBUG": "INFO",
                          "TOKENIZERS_PARALLELISM": "false", "AWS_SECRET_ACCESS_KEY": "k"})
    assert env == {"WANDB_API_KEY": "<redacted>", "HF_TOKEN": "<redacted>", "DB_PASSWORD": "<redacted>",
                   "NCCL_DEBUG": "INFO", "TOKENIZERS_PARALLELISM": "false", "AWS_SECRET_ACCESS_KEY": "<redacted>"}
    assert redact.argv(["--hub_token=hf_1", "--token_sample_size=512", "--hub_token", "hf_2", "--seed", "1"]) == \
        ["--hub_token=<redacted>", "--token_sample_size=512", "--hub_token", "<redacted>", "--seed", "1"]
    assert redact.split_argv(["--seed=1", "--hub_token", "a", "--seed", "2", "--x_token=b", "--token_sample_size=64"]) \
        == (["--seed=1", "--seed", "2", "--token_sample_size=64"], ["--hub_token", "a", "--x_token=b"])


def test_a_spec_shows_no_secret_and_the_node_gets_them_back(tmp_path):
    spec = jobs.build_spec({"job_dir": str(tmp_path / "job"), "container": "none", "gpus_per_node": 0,
                            "env": {"WANDB_API_KEY": "w-secret"}}, extra=["--hub_token", "h-secret"], cwd=tmp_path)
    text = jobs.dry_run_text(spec)
    assert "w-secret" not in text and "h-secret" not in text and "WANDB_API_KEY='<redacted>'" in text
    path = secrets.write(spec)
    assert path.stat().st_mode & 0o777 == 0o600
    back = secrets.reveal(specs.from_json(specs.to_json(secrets.shown(spec))))
    assert back.env["WANDB_API_KEY"] == "w-secret" and back.train_args == spec.train_args


@pytest.mark.parametrize("nodes, flag", [(1, ["--hub_token=h-secret"]), (2, ["--hub_token", "h-secret"])])
def test_secret_training_flags_never_reach_a_node_command_line_yet_reach_the_trainer(tmp_path, monkeypatch, nodes,
                                                                                    flag):
    """Every user of a node reads every process's argv (ps, /proc/PID/cmdline), only the owner its environment:
    the trainer run directly (1 process) and under accelerate/torchrun (2 nodes) get the flag in the environment."""
    from easyanimate import config
    from slurm import command
    from slurm.command import NodeContext
    spec = jobs.build_spec({"job_dir": str(tmp_path / "job"), "container": "none", "gpus_per_node": 0,
                            "nodes": nodes}, extra=["--seed=3", *flag, "--token_sample_size=64"], cwd=tmp_path)
    node = NodeContext("5", nodes, 0, "node1", "20005")
    argv = command.node_argv(spec, node)
    assert not any("h-secret" in arg or "hub_token" in arg for arg in argv), argv
    env = command.training_env(spec)
    assert json.loads(env[redact.SECRET_ARGS_ENV]) == ["--hub_token=h-secret"]  # the spec writes --flag=value
    assert "h-secret" not in jobs.dry_run_text(spec) and f"{redact.SECRET_ARGS_ENV}='<redacted>'" in \
        jobs.dry_run_text(spec)
    monkeypatch.setenv(redact.SECRET_ARGS_ENV, env[redact.SECRET_ARGS_ENV])  # what the launcher hands over
    cfg = config.parse_args(argv[argv.index(spec.entry) + 1:])
    assert (cfg.hub_token, cfg.seed, cfg.token_sample_size) == ("h-secret", 3, 64)


def test_the_trainers_config_dump_and_tracker_config_redact_the_hub_token(tmp_path):
    from easyanimate import config
    from easyanimate.train_control import write_config_dump
    from easyanimate.training.build import _tracker_config
    cfg = config.parse_args([f"--output_dir={tmp_path}", "--hub_token=hf_s3cr3t", "--token_sample_size=512"])
    write_config_dump(cfg, "diffusers")
    dump = (tmp_path / "config.json").read_text()
    assert "hf_s3cr3t" not in dump and '"token_sample_size": 512' in dump
    assert _tracker_config(cfg)["hub_token"] == "<redacted>"


@pytest.mark.integration
@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_a_secret_appears_in_no_output_no_log_and_no_file_others_can_read(slurm_env, tmp_path):
    values = {"MY_API_KEY": "s3cr3t-env-value-1", "HF_TOKEN": "s3cr3t-shell-value-2", "hub_token": "s3cr3t-hub-value-3"}
    job_dir = tmp_path / "job"
    own = ["slurm/submit.py", "--job", "none", "--job-dir", str(job_dir), "--name", "secrets", "--nodes", "2", "--gpus-per-node", "0",
           "--container", "none", "--mixed-precision", "no", "--entry", sj.STANDIN, "--time", "10:00",
           "--signal-lead-s", "60", "--env", f"MY_API_KEY={values['MY_API_KEY']}", "--env", "HF_TOKEN"]
    train = ["--", "--max_train_steps=3", "--checkpointing_steps=2", "--seed=1", f"--hub_token={values['hub_token']}"]
    env = {**os.environ, "HF_TOKEN": values["HF_TOKEN"]}  # exported in the submitting shell, passed by name
    outputs = []
    for extra in (["--dry-run"], []):
        done = subprocess.run([sys.executable, *own, *extra, *train], cwd=REPO, env=env, capture_output=True,
                              text=True, check=True)
        outputs.append(done.stdout + done.stderr)
    job_id = outputs[1].split("submitted job ")[1].split(";")[0]
    assert sj.wait_finished(job_id, 180) == "COMPLETED", sj.status_text(job_dir)
    for rank in (0, 1):  # accelerate launch, torchrun's agent, a worker on each node
        record = sj.runfolder.read_json(job_dir / "output" / "ranks" / f"rank{rank}.json")
        assert record["secret_digests"] == {k: hashlib.sha256(v.encode()).hexdigest() for k, v in values.items()}
        chain = record["launch_chain"]  # what `ps` shows every user of the node
        assert chain[-1].startswith("slurmstepd") and any("accelerate.commands.launch" in c for c in chain), chain
        assert not any(v in c for v in values.values() for c in chain) and not any("hub_token" in c for c in chain)
    outputs.append(sj.status_text(job_dir))
    for text in outputs:
        assert not any(v in text for v in values.values())
    holders = [p for p in tmp_path.rglob("*") if p.is_file() and any(v.encode() in p.read_bytes() for v in values.values())]
    assert [p.name for p in holders] == ["secrets.json"], holders
    assert all(p.stat().st_mode & 0o077 == 0 for p in holders)
    assert list((job_dir / "logs").glob("*_log.*"))  # the logs exist, and hold none of it
