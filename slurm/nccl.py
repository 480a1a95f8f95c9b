"""NCCL and collective-safety environment, by named fabric profile plus explicit overrides.

NCCL's docs split its variables into system configuration (keep them in scripts) and debugging ones
(NCCL_IB_DISABLE, NCCL_P2P_DISABLE, ...: "should not be used in production nor retained in scripts"). The seed
exports NCCL_IB_DISABLE=1 and NCCL_P2P_DISABLE=1 unconditionally; here that is the ``ethernet`` profile, chosen
on purpose (so no debugging-variable warning), and a warning fires when it is chosen on hardware that has
InfiniBand or NVLink. Profiles force only what NCCL cannot find out itself: NCCL >= 2.21 picks the RoCE GID
index, and the EFA provider decides on device RDMA from the instance type.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

# Set for every profile: a dead or wedged peer must fail the job, not hang it until the wall-clock limit.
SAFETY = {
    # A failed or timed-out NCCL collective tears the process down (the job then fails and is classified).
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    # Flight recorder: on a collective timeout every rank dumps its last collectives (into the job folder).
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
    "TORCH_FR_BUFFER_SIZE": "2000",
    # One line per rank naming the transport NCCL picked (NET/IB, NET/Socket, P2P/NVLink...), at start only.
    "NCCL_DEBUG": "INFO",
    "NCCL_DEBUG_SUBSYS": "INIT,NET",
}

PROFILES: dict[str, dict[str, str]] = {
    # NCCL detects IB, NVLink and sockets itself; nothing is forced.
    "auto": {},
    # IB fabric: make sure IB is on (sites and images sometimes export IB_DISABLE) and keep the bootstrap off
    # loopback and docker bridges. Pin HCAs with --env NCCL_IB_HCA=mlx5_0,mlx5_1 if the node has spares.
    "infiniband": {"NCCL_IB_DISABLE": "0", "NCCL_SOCKET_IFNAME": "^lo,docker"},
    # RoCE: the IB verbs transport over Ethernet; the GID index (RoCE v2, IPv4) is NCCL's own pick since 2.21.
    # Pin it with --env NCCL_IB_GID_INDEX=N only on a fabric where that pick is wrong.
    "roce": {"NCCL_IB_DISABLE": "0", "NCCL_SOCKET_IFNAME": "^lo,docker"},
    # AWS EFA through the aws-ofi-nccl plugin (in the image, as libnccl-net-ofi.so: used only when asked for).
    # Device RDMA is left to the provider: forcing it breaks instance types without it (p4d has it, p3dn not).
    "efa": {"NCCL_NET_PLUGIN": "ofi", "FI_PROVIDER": "efa", "FI_EFA_FORK_SAFE": "1",
            "NCCL_SOCKET_IFNAME": "^lo,docker"},
    # The seed's two exports: TCP sockets between nodes, host memory between GPUs of one node.
    "ethernet": {"NCCL_IB_DISABLE": "1", "NCCL_P2P_DISABLE": "1"},
    # Workstation GPUs without peer-to-peer support (what accelerate forces for RTX 40xx).
    "consumer-gpu": {"NCCL_P2P_DISABLE": "1"},
}

# NCCL's "Debugging" section: fine as a workaround, harmful when left in production scripts.
DEBUGGING_VARIABLES = ("NCCL_IB_DISABLE", "NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_P2P_LEVEL",
                       "NCCL_NET_GDR_LEVEL", "NCCL_ALGO", "NCCL_PROTO")


COLLECTIVE_TIMEOUT_VARIABLE = "EASYANIMATE_COLLECTIVE_TIMEOUT_MIN"


def environment(profile: str, overrides: dict[str, str], *, collective_timeout_min: int) -> dict[str, str]:
    """Effective variables: safety defaults, then the profile, then explicit overrides (which always win)."""
    env = dict(SAFETY)
    env["DEEPSPEED_TIMEOUT"] = str(collective_timeout_min)  # minutes, read by deepspeed.init_distributed
    # The same for DDP jobs: the trainer's process group (accelerate) takes its timeout from here.
    env[COLLECTIVE_TIMEOUT_VARIABLE] = str(collective_timeout_min)
    env.update(PROFILES[profile])
    env.update(overrides)
    return env


def detect_hardware(sys_root: Path = Path("/sys"), nvidia_smi: Callable[[], str | None] | None = None) -> dict:
    """What the node has: InfiniBand HCAs (from sysfs) and NVLink between GPUs (from ``nvidia-smi topo -m``)."""
    ib_dir = sys_root / "class" / "infiniband"
    hcas = sorted(p.name for p in ib_dir.iterdir()) if ib_dir.is_dir() else []
    topo = (nvidia_smi or _nvidia_smi_topology)()
    nvlink = None if topo is None else bool(re.search(r"\bNV\d+\b", topo))
    return {"infiniband": hcas, "nvlink": nvlink}


def _nvidia_smi_topology() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def warnings(env: dict[str, str], hardware: dict, profile: str = "auto") -> list[str]:
    """Problems with the effective values on this node's hardware, worded for the job log. A debugging variable
    the chosen profile sets is a deliberate choice, not a leftover: only overrides of it are reported."""
    found = []
    chosen = PROFILES.get(profile, {})
    for name in DEBUGGING_VARIABLES:
        if name in env and chosen.get(name) != env[name]:
            found.append(f"{name}={env[name]} is an NCCL debugging variable (NCCL docs: not for production); "
                         "set it only as a workaround.")
    if env.get("NCCL_IB_DISABLE") == "1" and hardware.get("infiniband"):
        found.append(f"NCCL_IB_DISABLE=1 but this node has InfiniBand ({', '.join(hardware['infiniband'])}): "
                     "inter-node traffic falls back to TCP sockets. Use --nccl infiniband (or auto).")
    if env.get("NCCL_P2P_DISABLE") == "1" and hardware.get("nvlink"):
        found.append("NCCL_P2P_DISABLE=1 but this node's GPUs have NVLink: intra-node traffic goes through "
                     "host memory. Use --nccl auto (or infiniband).")
    return found
