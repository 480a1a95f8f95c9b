#!/usr/bin/env bash
# One command for a lent GPU machine (README: "GPU check"): the seed's V5.1 DeepSpeed job at the real 12B
# widths, a bitwise resume after USR2, throughput/MFU/overhead/memory, the loader at 8 workers. Prints one line
# per part (PASS/FAIL/INFO and numbers) and writes gpu_check.json after each part ($OUT, else
# benchmarks/gpu/results). Missing packages come from benchmarks/gpu/wheels (benchmarks/gpu/build_wheels.sh),
# installed into /tmp, never from the network.
#   bash benchmarks/gpu_check.sh             # on the GPU machine, < 8 minutes
#   bash benchmarks/gpu_check.sh --dry-run   # here: the same parts at tiny sizes on the CPU
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
[[ -x "$root/.venv/bin/python" ]] && python="${PYTHON:-$root/.venv/bin/python}"
wheels="$root/benchmarks/gpu/wheels"
if ! "$python" -c "import diffusers, deepspeed, decord, submitit, av" >/dev/null 2>&1; then
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "environment     FAIL  packages missing and no wheels in $wheels (run benchmarks/gpu/build_wheels.sh here, carry that folder)"
        exit 1
    fi
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/easyanimate-gpu-site "$wheels"/*.whl
    export PYTHONPATH="/tmp/easyanimate-gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec "$python" -m benchmarks.gpu.check "$@"
