#!/usr/bin/env bash
# The README's demo: build a tiny random-weight V5.1 model and a small generated dataset, then run the demo job
# (configs/jobs/demo.yaml: DeepSpeed ZeRO-2 on CPU) on this machine through submitit's local executor, with the
# same launcher, environment, markers and attempt records a SLURM job gets. A few minutes on 2 CPU cores.
#   bash slurm/demo.sh [-- extra training flags]      (EASYANIMATE_DEMO_DIR: where it writes; default demo/)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
demo="${EASYANIMATE_DEMO_DIR:-demo}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

bash containers/setup_venv.sh
py="${EASYANIMATE_VENV:-$root/.venv}/bin/python"

[ -f "$demo/models/tiny-v5.1/model_index.json" ] || "$py" -m easyanimate.cli make-tiny-model --version v5.1 "$demo/models/tiny-v5.1"
[ -f "$demo/data/metadata_control.json" ] || "$py" -m easyanimate.cli make-demo-data "$demo/data"

[ "${1:-}" = "--" ] && shift
rm -rf "$demo/run"  # a fresh run each time (a kept one would resume at its last step and stop at once)
"$py" slurm/submit.py --local --job configs/jobs/demo.yaml --job-dir "$demo/run" -- \
    --pretrained_model_name_or_path="$demo/models/tiny-v5.1" --train_data_dir="$demo/data" \
    --train_data_meta="$demo/data/metadata_control.json" "$@"
"$py" slurm/submit.py status "$demo/run"
