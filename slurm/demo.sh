#!/usr/bin/env bash
# The README's demo: build a tiny random-weight V5.1 model and a small generated dataset, then run the demo job
# (configs/jobs/demo.yaml: DeepSpeed ZeRO-2 on CPU) with a validation video and tensorboard, and say where to look.
#   bash slurm/demo.sh [-- extra training flags]
#       on this machine through submitit's local executor, with the same launcher, environment, markers and
#       attempt records a SLURM job gets. A few minutes on 2 CPU cores.
#   bash slurm/demo.sh --cluster [-- extra training flags]
#       the whole product: brings up the 4-node test SLURM (tests/slurm/cluster.py, root and the packages of
#       tests/setup_system.sh needed), submits the demo with `submit.py --nodes 4`, preempts it once with a
#       higher-priority job, lets it requeue and finish, prints its status and curves, stops the cluster again.
# EASYANIMATE_DEMO_DIR: where it writes (default demo/); EASYANIMATE_TEST_CLUSTER_SLOT picks the cluster's ports.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
demo="${EASYANIMATE_DEMO_DIR:-demo}"
mkdir -p "$demo" && demo="$(cd "$demo" && pwd)"  # absolute: jobs may start in another folder
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

cluster=0
[ "${1:-}" = "--cluster" ] && { cluster=1; shift; }
[ "${1:-}" = "--" ] && shift

bash containers/setup_venv.sh
py="${EASYANIMATE_VENV:-$root/.venv}/bin/python"

[ -f "$demo/models/tiny-v5.1/model_index.json" ] || "$py" -m easyanimate.cli make-tiny-model --version v5.1 "$demo/models/tiny-v5.1"
[ -f "$demo/data/metadata_control.json" ] || "$py" -m easyanimate.cli make-demo-data "$demo/data"

# The first video's control video is the validation input (its training video gives the reference image).
control="$("$py" -c 'import json, sys
entries = json.load(open(sys.argv[1]))
print(next(e["control_file_path"] for e in entries if e.get("type") == "video"))' "$demo/data/metadata_control.json")"
flags=(--pretrained_model_name_or_path="$demo/models/tiny-v5.1" --train_data_dir="$demo/data"
       --train_data_meta="$demo/data/metadata_control.json" --report_to=tensorboard
       --validation_prompts "a person dancing" --validation_paths "$demo/data/$control")

if [ "$cluster" = 1 ]; then
    exec "$py" slurm/demo_cluster.py "$demo" -- "${flags[@]}" "$@"
fi

run="$demo/run"
rm -rf "$run"  # a fresh run each time (a kept one would resume at its last step and stop at once)
"$py" slurm/submit.py --local --job configs/jobs/demo.yaml --job-dir "$run" -- "${flags[@]}" --validation_steps=6 "$@"
"$py" slurm/submit.py status "$run"
"$py" slurm/demo_cluster.py --where "$run"
