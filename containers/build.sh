#!/usr/bin/env bash
# Build the training image from containers/easyanimate.def and run its %test (imports, DeepSpeed, NCCL).
#   bash containers/build.sh [OUT.sif]        (default easyanimate.sif; run from anywhere)
# Needs apptainer (or singularity) and either root or --fakeroot; APPTAINER_BUILD_FLAGS overrides the flags.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m "${1:-easyanimate.sif}")"
runtime="$(command -v apptainer || command -v singularity || true)"
if [ -z "$runtime" ]; then
    echo "build.sh: apptainer is not installed (https://apptainer.org/docs/admin/main/installation.html)" >&2
    exit 1
fi
cd "$root"  # %files paths are relative to the repository root
# shellcheck disable=SC2086
"$runtime" build ${APPTAINER_BUILD_FLAGS:---fakeroot} "$out" containers/easyanimate.def
"$runtime" test "$out"
echo "built $out"
