#!/usr/bin/env bash
# System packages the tests need (Debian; run as root): SLURM + munge for the real test cluster, Go for the
# stand-in container runtime (tests/slurm/apptainer, built by the tests).
set -euo pipefail
packages=(slurm-wlm munge golang-go)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests need: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
