"""SLURM-suite fixtures: the repository on sys.path (slurm/ is not an installed package) and a real four-node
SLURM cluster, started by the tests themselves and stopped by pid files at the end of the session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.slurm import standin_runtime  # noqa: E402
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
def slurm_env(slurm_cluster, monkeypatch, tmp_path) -> Cluster:
    """Point sbatch/squeue/scontrol (and the jobs they start) at the test cluster, from the test's own folder: a job
    submitted without --output writes slurm-JOBID.out into the current directory, never into the repository."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return slurm_cluster


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


@pytest.fixture
def container_env(slurm_env, standin_bin, monkeypatch):
    """Jobs submitted from here find the stand-in runtime on the nodes' PATH (sbatch exports our environment), and
    host jobs the same tools as the stand-in image (its PATH starts with the venv: one ninja, one compile cache)."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{standin_runtime.path_with(standin_bin)}")
    return slurm_env
