"""Preflight verdicts from planted facts: each fault gives FAIL or WARN naming its fix; a healthy node passes."""

from __future__ import annotations

import copy

import pytest

from slurm.check import verdicts
from slurm.check.verdicts import FAIL, PASS, SKIP, WARN


def rank(i: int, host: str, **extra) -> dict:
    return {"rank": i, "local_rank": i % 2, "hostname": host, "cpus_bound": 8, "cpu_list": list(range(8 * i, 8 * i + 8)),
            "memory_bytes": 500 * 2**30, "runtime": "apptainer /img.sif", "gpu_count": 2, "gpu_name": "NVIDIA H100",
            "torch_cuda": "12.8", "driver_cuda": "12.9", "signal_seen": "SIGUSR2", "rdma_devices": ["mlx5_0"],
            "imports": {"torch": "2.13.0", "deepspeed": "0.19.8", "decord": "0.6.0"},
            "environment": {"NCCL_IB_HCA": "mlx5"}, **extra}


@pytest.fixture
def healthy() -> dict:
    return {
        "job": {"nodes": 2, "gpus_per_node": 2, "procs_per_node": 2, "cpus_per_task": 16, "mem": "0",
                "container": "apptainer", "deepspeed": True, "signal_lead_s": 900},
        "ranks": [rank(0, "n1"), rank(1, "n1"), rank(2, "n2"), rank(3, "n2")],
        "partition": {"PreemptMode": "REQUEUE", "GraceTime": 900, "preempt_send_user_signal": True},
        "signal_test": {"sent": True, "signal": "USR2", "save_s": 5},
        "node_chains": [{"host": "n1", "exit_code": 0}, {"host": "n2", "exit_code": 0}],
        "allreduce": {"backend": "nccl", "transport": "IB", "results": [{"bytes": 2**20, "busbw_gbps": 20.0}]},
        "storage": {"path": "/scratch/out", "error": None, "bytes_per_node": 2**31, "free_bytes": 10**15,
                    "nodes": [{"host": "n1", "gbps": 2.0}, {"host": "n2", "gbps": 3.0}]},
        "data": {"paths": ["/data"], "missing_paths": [], "sample": {"checked": 4, "bad": []}},
        "model": {"layout": "diffusers", "params": 12_000_000_000},
        "params": 12_000_000_000,
    }


def row(rows, check: str) -> verdicts.Row:
    return next(r for r in rows if r.check.startswith(check))


def test_a_healthy_cluster_passes_every_row(healthy):
    rows = verdicts.evaluate(healthy)
    assert {r.status for r in rows} == {PASS}, verdicts.table(rows)
    assert verdicts.overall(rows) == PASS


@pytest.mark.parametrize("plant, check, status, fix", [
    (lambda f: f.update(ranks=[], node_chains=[], outcome={"detail": "apptainer: command not found"}),
     "runtime and image", FAIL, "install Apptainer"),
    (lambda f: f["ranks"][3].update(signal_seen=None), "trainer processes saw", FAIL, "signal did not reach"),
    (lambda f: f["node_chains"][1].update(exit_code=-12), "launch chain survived", FAIL, "inside.py"),
    (lambda f: f["job"].update(signal_lead_s=60), "signal lead time", FAIL, "raise --signal-lead-s"),
    (lambda f: f["partition"].update(GraceTime=30), "partition GraceTime", FAIL, "longer GraceTime"),
    (lambda f: f["allreduce"].update(transport="Socket"), "NCCL transport", WARN, "rdma-core"),
    (lambda f: f["ranks"][0].update(driver_cuda="12.2"), "driver vs image CUDA", FAIL, "older CUDA base"),
    (lambda f: f["ranks"][0]["imports"].update(decord=None), "python packages", FAIL, "rebuild the image"),
    (lambda f: f["storage"].update(error="PermissionError: /proj/out", nodes=[]), "output folder writable", FAIL,
     "every node can create and write"),
    (lambda f: f["data"].update(missing_paths=["/data"]), "paths seen", FAIL, "compute nodes mount"),
    (lambda f: f["model"].update(error="StrictLoadError: x"), "model folder", FAIL, "layout"),
    (lambda f: f["partition"].update(PreemptMode="CANCEL"), "PreemptMode", WARN, "resubmits itself"),
    (lambda f: [r.update(cpus_bound=1) for r in f["ranks"]], "CPU cores", WARN, "--cpus-per-task"),
])
def test_each_planted_fault_is_flagged_with_its_fix(healthy, plant, check, status, fix):
    facts = copy.deepcopy(healthy)
    plant(facts)
    rows = verdicts.evaluate(facts)
    found = row(rows, check)
    assert found.status == status and fix in found.fix, verdicts.table(rows)
    assert verdicts.overall(rows) == (FAIL if status == FAIL else WARN)


def test_a_failed_write_test_still_judges_the_lead_time_at_the_conservative_speed(healthy):
    healthy["storage"] = {"path": "/x", "error": "OSError", "nodes": [], "bytes_per_node": 1}
    lead = row(verdicts.evaluate(healthy), "signal lead time")
    assert "assumed" in lead.value and lead.status in (PASS, WARN, FAIL)


def test_cpu_jobs_skip_gpu_rows_and_single_process_jobs_skip_the_all_reduce(healthy):
    healthy["job"].update(gpus_per_node=0, nodes=1, procs_per_node=1)
    healthy["ranks"] = healthy["ranks"][:1]
    healthy["node_chains"] = healthy["node_chains"][:1]
    del healthy["allreduce"]
    rows = verdicts.evaluate(healthy)
    assert row(rows, "GPUs").status == SKIP and row(rows, "all-reduce").status == SKIP


def test_the_table_prints_the_fix_under_each_failing_row(healthy):
    healthy["data"]["missing_paths"] = ["/data"]
    text = verdicts.table(verdicts.evaluate(healthy))
    lines = text.splitlines()
    failing = next(i for i, line in enumerate(lines) if line.startswith("FAIL"))
    assert "fix: put model and data" in lines[failing + 1] and text.rstrip().endswith("overall: FAIL")
