#!/usr/bin/env bash
# The Omniglot paper presets on one GPU for a fixed time each, then the 600-task evaluation,
# plus the conv4 meta-step timing on that GPU. Used for the GPU figures in the README.
#   bash benchmarks/gpu_paper_runs.sh DATA_ROOT OUT_DIR [MINUTES_PER_PRESET] [DEVICE]
set -euo pipefail
root=$1; out=$2; minutes=${3:-3}; device=${4:-cuda}
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}:$(pwd)/src"
mkdir -p "$out"
python3 benchmarks/meta_step.py --workload conv4-1 --device "$device" --repeats 10
python3 benchmarks/meta_step.py --workload conv4-5 --device "$device" --repeats 5
# name:preset:extra keys (the 20-way Lake protocol: background alphabets train, evaluation test)
for run in omniglot-5w1s:omniglot-5w1s: omniglot-20w1s:omniglot-20w1s: \
           omniglot-20w1s-lake:omniglot-20w1s:protocol=lake; do
    IFS=: read -r name preset extra <<< "$run"
    python3 -m mamlkit train "$preset" --data-root "$root" --out "$out/$name" --no-progress \
        --set time_limit="$minutes" --set batching=vmap --set device="$device" \
        ${extra:+--set "$extra"}
    python3 -m mamlkit eval "$out/$name"
done
