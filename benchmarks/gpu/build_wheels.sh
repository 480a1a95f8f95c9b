#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh carries to a GPU machine that has torch, accelerate and transformers but no
# network and none of diffusers, DeepSpeed, decord, PyAV, submitit (see the README section "GPU check").
# Python 3.12, manylinux x86_64, the versions pinned in pyproject.toml. DeepSpeed has no wheel on PyPI: it is built
# here from its sdist as pure Python (DS_BUILD_OPS=0: its ops are JIT-built where needed; ZeRO-2 with torch's
# AdamW needs none). Output: benchmarks/gpu/wheels/ (ignored by git), kept under the device's 64 MiB limit.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/wheels"
python="${PYTHON:-$root/.venv/bin/python}"
rm -rf "$out" && mkdir -p "$out"

pin() {  # the version pyproject.toml pins for $1
    sed -n "s/^ *\"$1==\([^\"]*\)\",*$/\1/p" "$root/pyproject.toml"
}

# Pinned by us, missing there; then what they need that the machine lacks (its package list: KINDS.md).
installed() {  # the version in the venv the test suite runs with
    "$python" -c "import importlib.metadata as m; print(m.version('$1'))"
}
binary=("diffusers==$(pin diffusers)" "decord==$(pin decord)" "submitit==$(pin submitit)")
for name in av importlib-metadata hjson pydantic pydantic-core annotated-types typing-inspection; do
    binary+=("$name==$(installed "$name")")
done
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 \
    -d "$out" "${binary[@]}"

# DeepSpeed: sdist -> pure-Python wheel, no ops compiled.
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
"$python" -m pip download -q --no-deps --no-binary=:all: -d "$build" "deepspeed==$(pin deepspeed)"
tar -xzf "$build"/deepspeed-*.tar.gz -C "$build"
(cd "$build"/deepspeed-*/ && DS_BUILD_OPS=0 DS_BUILD_STRING="" "$python" -m pip wheel -q --no-deps \
    --no-build-isolation -w "$out" .)
ls -la "$out"
du -sh "$out"
