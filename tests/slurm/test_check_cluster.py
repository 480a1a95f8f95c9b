"""`python slurm/submit.py check` on the real test cluster: a healthy 2-node check, planted faults, no runtime."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from easyanimate import runfolder
from slurm import attempts

from slurm_jobs import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


def check(tmp_path, model, data, *extra_spec: str, train: tuple[str, ...] = (), nodes: str = "2"):
    argv = [sys.executable, "slurm/submit.py", "check", "--job", "configs/jobs/demo.yaml", "--nodes", nodes,
            "--job-dir", str(tmp_path / "job"), "--storage-mib", "32", *extra_spec, "--",
            f"--pretrained_model_name_or_path={model}", f"--train_data_dir={data}",
            f"--train_data_meta={data / 'metadata_control.json'}", *train]
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=400)


def rows(tmp_path) -> dict[str, dict]:
    saved = json.loads((tmp_path / "job" / "check.json").read_text())
    return {row["check"]: row for row in saved["rows"]}


@pytest.mark.timeout(420)
def test_check_on_two_nodes_measures_the_fabric_and_storage_and_finds_nothing_wrong(slurm_env, tmp_path,
                                                                                  tiny_model_v51, demo_data):
    done = check(tmp_path, tiny_model_v51, demo_data, "--signal-lead-s", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    found = rows(tmp_path)
    assert not [r for r in found.values() if r["status"] == "FAIL"], done.stdout
    assert found["nodes and processes"]["value"].startswith("2 node(s), 2/2")
    assert "GB/s" in found["all-reduce bus bandwidth (gloo)"]["value"]
    assert "slowest node" in found["write+fsync, all nodes at once"]["value"]
    assert found["trainer processes saw the signal"]["status"] == "PASS"
    assert found["launch chain survived"]["status"] == "PASS"
    assert found["check-data on a sample"]["status"] == "PASS"
    assert "diffusers layout" in found["model folder (strict, no weights loaded)"]["value"]
    assert stat.S_IMODE((tmp_path / "job" / "check.json").stat().st_mode) == 0o600
    shown = subprocess.run([sys.executable, "slurm/submit.py", "status", str(tmp_path / "job")],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert shown.returncode == 0 and "preflight check: " in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.timeout(420)
def test_check_through_the_container_runtime_sees_the_signal_survive_the_go_runtime(container_env, standin_image,
                                                                                    tmp_path, tiny_model_v51,
                                                                                    demo_data):
    done = check(tmp_path, tiny_model_v51, demo_data, "--signal-lead-s", "120", "--container", "apptainer",
                 "--image", str(standin_image))
    assert done.returncode == 0, done.stdout + done.stderr
    found = rows(tmp_path)
    assert not [r for r in found.values() if r["status"] == "FAIL"], done.stdout
    assert found["runtime and image"]["value"].startswith("apptainer "), done.stdout
    assert found["nodes and processes"]["value"].startswith("2 node(s), 2/2")
    assert found["launch chain survived"]["status"] == "PASS"
    assert "PYTHONNOUSERSITE=1" in found["effective NCCL/torch variables"]["value"]


@pytest.mark.timeout(420)
def test_planted_faults_each_fail_with_their_fix(slurm_env, tmp_path, tiny_model_v51, demo_data):
    done = check(tmp_path, tiny_model_v51, demo_data, "--signal-lead-s", "10", nodes="1",
                 train=("--output_dir=/proc/easyanimate-cannot-exist/out",
                        f"--train_data_meta={tmp_path / 'absent' / 'meta.json'}"))
    assert done.returncode == 1, done.stdout + done.stderr
    found = rows(tmp_path)
    for name, fix in (("output folder writable", "can create and write"),
                      ("signal lead time", "raise --signal-lead-s"),
                      ("paths seen from a compute node", "compute nodes mount")):
        assert found[name]["status"] == "FAIL" and fix in found[name]["fix"], done.stdout
        assert "fix: " in done.stdout


@pytest.mark.timeout(240)
def test_a_node_without_the_container_runtime_fails_the_check_and_is_not_requeued(slurm_env, tmp_path, monkeypatch,
                                                                                 tiny_model_v51, demo_data):
    image = tmp_path / "easyanimate.sif"
    image.write_bytes(b"not really an image")
    # The host's tools without any container runtime (tests of the container path put a stand-in on PATH).
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if not any((Path(p) / n).exists() for n in ("apptainer", "singularity"))))
    done = check(tmp_path, tiny_model_v51, demo_data, "--container", "apptainer", "--image", str(image), nodes="1")
    assert done.returncode == 1, done.stdout + done.stderr
    found = rows(tmp_path)
    assert found["runtime and image"]["status"] == "FAIL", done.stdout
    assert "install Apptainer" in found["runtime and image"]["fix"]
    tried = attempts.attempt_dirs(tmp_path / "job" / "check")
    assert len(tried) == 1 and not runfolder.read_json(tried[0] / "attempt.json")["outcome"]["requeue"]
