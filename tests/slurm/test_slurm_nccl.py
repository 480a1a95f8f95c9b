"""NCCL profiles: effective values, override precedence, and warnings for debugging variables on IB/NVLink."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm import nccl

NVLINK_TOPO = "\tGPU0\tGPU1\nGPU0\t X \tNV18\nGPU1\tNV18\t X \n"
PCIE_TOPO = "\tGPU0\tGPU1\nGPU0\t X \tPHB\nGPU1\tPHB\t X \n"


def fake_sys(tmp_path: Path, hcas: list[str]) -> Path:
    for hca in hcas:
        (tmp_path / "class" / "infiniband" / hca).mkdir(parents=True)
    return tmp_path


def test_ethernet_profile_is_exactly_the_seeds_two_exports_plus_safety():
    env = nccl.environment("ethernet", {}, collective_timeout_min=30)
    assert env["NCCL_IB_DISABLE"] == "1" and env["NCCL_P2P_DISABLE"] == "1"
    assert set(env) - set(nccl.SAFETY) == {"NCCL_IB_DISABLE", "NCCL_P2P_DISABLE", "DEEPSPEED_TIMEOUT",
                                           nccl.COLLECTIVE_TIMEOUT_VARIABLE}


@pytest.mark.parametrize("profile", sorted(nccl.PROFILES))
def test_every_profile_fails_dead_peers_fast(profile):
    env = nccl.environment(profile, {}, collective_timeout_min=12)
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["DEEPSPEED_TIMEOUT"] == "12" and env[nccl.COLLECTIVE_TIMEOUT_VARIABLE] == "12"  # DeepSpeed and DDP
    assert env["NCCL_DEBUG_SUBSYS"] == "INIT,NET"  # the transport NCCL picked is logged


def test_default_profile_disables_nothing():
    env = nccl.environment("auto", {}, collective_timeout_min=30)
    assert not set(env) & set(nccl.DEBUGGING_VARIABLES)


def test_explicit_overrides_beat_the_profile_and_the_safety_defaults():
    env = nccl.environment("infiniband", {"NCCL_IB_DISABLE": "1", "NCCL_DEBUG": "WARN", "NCCL_IB_HCA": "mlx5_0"},
                           collective_timeout_min=30)
    assert env["NCCL_IB_DISABLE"] == "1" and env["NCCL_DEBUG"] == "WARN" and env["NCCL_IB_HCA"] == "mlx5_0"


def test_hardware_detection_reads_sysfs_and_nvidia_smi(tmp_path):
    hw = nccl.detect_hardware(fake_sys(tmp_path, ["mlx5_0", "mlx5_1"]), nvidia_smi=lambda: NVLINK_TOPO)
    assert hw == {"infiniband": ["mlx5_0", "mlx5_1"], "nvlink": True}
    assert nccl.detect_hardware(tmp_path / "none", nvidia_smi=lambda: PCIE_TOPO)["nvlink"] is False
    assert nccl.detect_hardware(tmp_path / "none", nvidia_smi=lambda: None) == {"infiniband": [], "nvlink": None}


def test_ethernet_profile_on_ib_and_nvlink_hardware_warns_about_both():
    env = nccl.environment("ethernet", {}, collective_timeout_min=30)
    found = nccl.warnings(env, {"infiniband": ["mlx5_0"], "nvlink": True}, profile="ethernet")
    assert any("InfiniBand (mlx5_0)" in w for w in found)
    assert any("NVLink" in w for w in found)
    assert not any("debugging variable" in w for w in found)  # the profile's own choice, not a leftover


@pytest.mark.parametrize("profile", sorted(nccl.PROFILES))
def test_no_profile_trips_the_debugging_variable_warning(profile):
    env = nccl.environment(profile, {}, collective_timeout_min=30)
    assert nccl.warnings(env, {"infiniband": [], "nvlink": None}, profile=profile) == []


def test_a_debugging_variable_from_an_override_still_warns():
    env = nccl.environment("infiniband", {"NCCL_P2P_DISABLE": "1"}, collective_timeout_min=30)
    found = nccl.warnings(env, {"infiniband": ["mlx5_0"], "nvlink": None}, profile="infiniband")
    assert len(found) == 1 and "NCCL_P2P_DISABLE=1 is an NCCL debugging variable" in found[0]


def test_roce_leaves_the_gid_index_and_efa_device_rdma_to_nccl_and_the_provider():
    assert "NCCL_IB_GID_INDEX" not in nccl.environment("roce", {}, collective_timeout_min=30)
    assert "FI_EFA_USE_DEVICE_RDMA" not in nccl.environment("efa", {}, collective_timeout_min=30)
    pinned = nccl.environment("roce", {"NCCL_IB_GID_INDEX": "3"}, collective_timeout_min=30)
    assert pinned["NCCL_IB_GID_INDEX"] == "3"  # a site that needs it pins it with --env


def test_auto_profile_on_ib_hardware_is_silent():
    env = nccl.environment("auto", {}, collective_timeout_min=30)
    assert nccl.warnings(env, {"infiniband": ["mlx5_0"], "nvlink": True}) == []
