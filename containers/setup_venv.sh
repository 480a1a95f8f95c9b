#!/usr/bin/env bash
# Python environment for a machine without the container (laptops, CI, the CPU dev machines): a venv in
# .venv with the CPU torch wheel, then this package, every version from containers/constraints.txt (the same
# file the image is built with, so CI tests the image's stack).
# On a GPU cluster use the Apptainer image instead (containers/easyanimate.def), which brings CUDA torch.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EASYANIMATE_VENV:-$root/.venv}"
constraints="$root/containers/constraints.txt"
torch_spec="${EASYANIMATE_TORCH:-$(grep -E '^torch==' "$constraints")}"
extras="${1:-test}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build on a CPU machine.
"$venv/bin/python" -m pip install -q "$torch_spec"
"$venv/bin/python" -m pip install -q -c "$constraints" -e "$root[$extras]"
if "$venv/bin/python" -m pip show torchvision >/dev/null 2>&1; then
    # PyPI's torchvision is CUDA-linked and breaks `import transformers` beside the CPU torch.
    "$venv/bin/python" -m pip uninstall -y -q torchvision
fi
echo "venv ready: $venv"
