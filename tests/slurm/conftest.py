"""SLURM-suite fixtures: the repository on sys.path (slurm/ is not an installed package) and a real four-node
SLURM cluster, started by the tests themselves and stopped by pid files at the end of the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.slurm.cluster import Cluster, available  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Cluster:
    reason = available()
    if reason:
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch) -> Cluster:
    """Point sbatch/squeue/scontrol (and the jobs they start) at the test cluster."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return slurm_cluster
