#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, the venv, then pytest (unit and integration,
# including the real local SLURM cluster the slurm tests start). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tests/setup_system.sh
bash containers/setup_venv.sh test
export PYTHONHASHSEED=0 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
exec "$root/.venv/bin/python" -m pytest "$@"
