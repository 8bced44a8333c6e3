#!/usr/bin/env bash
# Omniglot 20-way at the paper's size on one GPU, as one prepared command (issue 23, item 3).
#
# In --minutes of wall-clock (default 9), in this order:
#   1. env     python, torch, the GPU; mamlkit's supervised path imports with gymnasium and
#              mujoco hidden (the GPU image has neither)
#   2. choice  benchmarks/meta_step.py times one meta-step of each preset's shapes with
#              batching=stacked, vmap and vmap + torch.compile (capped) on this device, and its
#              GPU memory; benchmarks/gpu_plan.py gives each preset what gets it the most
#              iterations in its time within its half of the GPU's memory (compile pays for its
#              compilation first, in every session, since a run resumes with the batching and
#              compile it started with). --choice FILE reuses an earlier choice.json.
#   3. omniglot-20w1s and omniglot-20w5s (the full paper presets), side by side on the one GPU
#              (each process spends much of a step sampling tasks on the CPU, so two share the
#              GPU well; one after the other if their memory does not fit at once): train until
#              the time left for them (time_limit; a checkpoint every 500 iterations and at the
#              limit), `mamlkit eval` on 600 held-out tasks, pack each run directory.
#              --resume-from DIR continues DIR/<preset> (a committed run directory) instead.
#   4. speed   benchmarks/any_model.py on this device: a user's conv net with stock batch norm,
#              Conv4 and ResNet-12, mamlkit against the per-task loop (and learn2learn, whose
#              MAML is pure Python: --peers DIR puts its source on the path).
# What comes back, at most 8 files in --out: gpu_paper_runs.log, summary.json, choice.json,
# omniglot-20w1s.tar.gz, omniglot-20w5s.tar.gz (config.yaml, metrics.jsonl, run.json,
# eval.json, checkpoints/latest and that checkpoint; well under 16 MiB each), any_model.json,
# any_model.md. Every step has its own time limit; a failed step is logged and the rest go on;
# the exit status is 1 if any step failed.
#
# ----- The device call (a session whose task has a GPU) -------------------------------------
# 1. Here, in the root of the checkout that travels:   bash benchmarks/gpu_paper_runs.sh --prepare
#    (copies the two Omniglot zips from /work/shared/data/omniglot and learn2learn 0.2.0's
#    source (pip download of its sdist: PyPI has no wheel of it for Python 3.12, and its MAML
#    needs no compiled part) into .gpu-carry/, which it adds to .git/info/exclude; 17 MB)
# 2. run, with carry [".gpu-carry"] and timeout_s 600 (kind left out), command:
#      mkdir -p /work/shared/data && { [ -e /work/shared/data/omniglot ] || ln -s "$PWD/.gpu-carry/omniglot" /work/shared/data/omniglot; } && bash benchmarks/gpu_paper_runs.sh --data-root /work/shared/data/omniglot --peers .gpu-carry/peers --resume-from benchmarks/results/omniglot/gpu --out "$OUT" --minutes 9
#    (the link gives the runs' config.yaml this machine's data_root, so `mamlkit eval` of them
#    works here as committed; --resume-from finds nothing the first time and starts afresh; a
#    later call may add --choice benchmarks/results/omniglot/gpu/choice.json to skip step 2)
# 3. Unpack here what came back (F: the reply's files_at), then commit benchmarks/results/omniglot/gpu:
#      G=benchmarks/results/omniglot/gpu; for p in omniglot-20w1s omniglot-20w5s; do
#        [ -f F/$p.tar.gz ] && rm -rf $G/$p && mkdir -p $G/$p && tar xzf F/$p.tar.gz -C $G/$p; done
#      cp F/gpu_paper_runs.log F/summary.json F/choice.json F/any_model.json F/any_model.md $G/
#    and give_back unless you run again at once. `mamlkit eval $G/omniglot-20w1s` here
#    re-evaluates on the CPU (same tasks; GPU and CPU arithmetic differ in the last bits).
# ---------------------------------------------------------------------------------------------
#
#   bash benchmarks/gpu_paper_runs.sh --data-root DIR --out DIR [--minutes 9] [--device cuda]
#        [--peers DIR] [--resume-from DIR] [--choice FILE] [--smoke]
#   bash benchmarks/gpu_paper_runs.sh --prepare [--data-root /work/shared/data/omniglot]
# --smoke: the same steps on the CPU with tiny settings (2 iterations of a small network, 4 eval
# tasks, a one-task benchmark), under a minute; tests/test_benchmarks_gpu_paper_runs.py runs it.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
PY="${PYTHON:-python3}"
PRESETS=(omniglot-20w1s omniglot-20w5s)

data_root="" out="" minutes=9 device="" peers="" resume_from="" choice_file="" smoke=0 prepare=0
usage() { sed -n '/^#   bash/,/^# --smoke/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --data-root) data_root=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --minutes) minutes=$2; shift 2
                   [[ "$minutes" =~ ^[1-9][0-9]*$ ]] || { echo "--minutes takes whole minutes" >&2; exit 2; } ;;
        --device) device=$2; shift 2 ;;
        --peers) peers=$2; shift 2 ;;
        --resume-from) resume_from=$2; shift 2 ;;
        --choice) choice_file=$2; shift 2 ;;
        --smoke) smoke=1; shift ;;
        --prepare) prepare=1; shift ;;
        *) echo "gpu_paper_runs.sh: unknown argument $1" >&2; usage ;;
    esac
done

# ---------------------------------------------------------------- --prepare (here, not there)
if [ "$prepare" = 1 ]; then
    src=${data_root:-/work/shared/data/omniglot}
    carry="$repo/.gpu-carry"
    exclude="$(git -C "$repo" rev-parse --git-path info/exclude)"
    case "$exclude" in /*) ;; *) exclude="$repo/$exclude" ;; esac
    mkdir -p "$(dirname "$exclude")" "$carry/omniglot" "$carry/peers"
    grep -qx '/.gpu-carry/' "$exclude" 2>/dev/null || echo '/.gpu-carry/' >> "$exclude"
    cp -f "$src/images_background.zip" "$src/images_evaluation.zip" "$carry/omniglot/" || exit 1
    if [ ! -f "$carry/peers/learn2learn/algorithms/maml.py" ]; then
        tmp="$(mktemp -d)"
        if "$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation \
                learn2learn==0.2.0 -d "$tmp" \
                && tar xzf "$tmp"/learn2learn-0.2.0.tar.gz -C "$tmp"; then
            rm -rf "$carry/peers/learn2learn"
            cp -r "$tmp/learn2learn-0.2.0/learn2learn" "$carry/peers/"
        else
            echo "learn2learn's source could not be fetched: the benchmark will run without it"
        fi
        rm -rf "$tmp"
    fi
    du -sh "$carry"
    echo "prepared $carry (ignored by $exclude); carry it as \".gpu-carry\""
    exit 0
fi

[ -n "$data_root" ] && [ -n "$out" ] || usage
if [ "$smoke" = 1 ]; then device=${device:-cpu}; else device=${device:-cuda}; fi
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
case "$data_root" in /*) ;; *) data_root="$(cd "$data_root" && pwd)" || exit 2 ;; esac
# the paths given are read from here on in the repository's root
[ -n "$resume_from" ] && [ -d "$resume_from" ] && resume_from="$(cd "$resume_from" && pwd)"
[ -n "$choice_file" ] && choice_file="$(cd "$(dirname "$choice_file")" && pwd)/$(basename "$choice_file")"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_paper_runs.XXXXXX")"
export PYTHONUNBUFFERED=1 PYTHONPATH="$repo/src${peers:+:$(cd "$peers" && pwd)}${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo" || exit 2

# ---------------------------------------------------------------- settings of the two modes
if [ "$smoke" = 1 ]; then
    # the code paths of the full run at toy sizes; time limits only as safety nets
    TRAIN_SET=(iterations=2 meta_batch_size=2 hidden=[16] query_shots=2 inner_steps=1
               "eval_steps=[0,1]" val_every=2 val_tasks=2 checkpoint_every=1 log_every=1
               eval_tasks=4)
    RESUME_SET=(iterations=4)  # two more
    CHOICE_ARGS=(--workload conv4-1 --tasks 1 --repeats 1 --warmup 0)
    declare -A WORKLOAD=([omniglot-20w1s]=conv4-1 [omniglot-20w5s]=conv4-1)
    BENCH_ARGS=(--workload conv4-seq-1 --tasks 1 --repeats 1 --warmup 0 --batchings stacked)
    COMPILE_CAP=0 R_BENCH=60 R_EVAL=60 R_START=0 R_FINAL=5
else
    TRAIN_SET=() RESUME_SET=()
    CHOICE_ARGS=(--workload conv4-20w1s conv4-20w5s --repeats 5 --warmup 2)
    declare -A WORKLOAD=([omniglot-20w1s]=conv4-20w1s [omniglot-20w5s]=conv4-20w5s)
    BENCH_ARGS=(--workload conv4-seq-1 conv4-1 resnet12-1 --repeats 3 --warmup 1 --memory
                --check-tasks 8 --batchings stacked vmap)
    # seconds kept for what follows the training: the process start before its clock runs
    # (imports, CUDA, decoding the data), the final validation and checkpoint, the evals and
    # packing, the benchmark, the summary
    R_START=30 R_EVAL=40 R_BENCH=75 R_FINAL=10
    COMPILE_CAP=$(( minutes * 60 / 9 ))  # the compile probe may use a ninth of the time
fi
deadline=$(( minutes * 60 ))
failures=()
left() { echo $(( deadline - SECONDS )); }
step() { echo; echo "=== [$(date -u +%H:%M:%S), ${SECONDS}s of $deadline] $*"; }
fail() { echo "!!! $*"; failures+=("$*"); }
# run_for SECONDS CMD...: the command with a time limit (TERM, then KILL 20 s later)
run_for() { local s=$1; shift; [ "$s" -lt 5 ] && s=5; timeout -k 20 "$s" "$@"; }

main() {
    echo "gpu_paper_runs.sh: device $device, $minutes minutes, smoke $smoke, out $out, work $work"
    echo "git: $(git -C "$repo" log -1 --format='%h %s' 2>/dev/null | cut -c1-100) $(git -C "$repo" status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"

    # ------------------------------------------------------------ 1. env
    step "1. environment"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    if ! run_for 120 "$PY" - "$device" "$work/env.json" "$data_root" <<'EOF'
import importlib.abc, json, platform, sys, time
start = time.perf_counter()
class Hide(importlib.abc.MetaPathFinder):
    """The GPU image has no simulators: the supervised path must import without them."""
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("gymnasium", "mujoco"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
sys.meta_path.insert(0, Hide())
import torch
import mamlkit
import mamlkit.cli, mamlkit.run.build, mamlkit.run.evaluate, mamlkit.run.load, mamlkit.run.loop
from mamlkit.run.config import resolve
from mamlkit.run.load import untrained
device = sys.argv[1]
# builds the test tasks too: the zips are decoded (and cached) once, here
learner = untrained(resolve("omniglot-20w5s", {"device": device, "data_root": sys.argv[3]}))
env = {"python": platform.python_version(), "torch": torch.__version__,
       "mamlkit": mamlkit.__version__, "cuda": torch.cuda.is_available(),
       "device": device, "cpus": __import__("os").cpu_count(),
       "supervised_imports_without_gymnasium": True,
       "conv4_20w_parameters": sum(p.numel() for p in learner.parameters())}
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("CUDA is not available to this torch: nothing to run on.")
    props = torch.cuda.get_device_properties(0)
    env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
               capability=f"{props.major}.{props.minor}", cuda_runtime=torch.version.cuda)
    torch.ones(1, device="cuda").sum().item()
sys.path.insert(0, "benchmarks")
from peers import available_peers
env["learn2learn"] = available_peers()["learn2learn"] or "available"
env["seconds"] = round(time.perf_counter() - start, 1)
json.dump(env, open(sys.argv[2], "w"), indent=1)
print(json.dumps(env, indent=1))
EOF
    then
        fail "env: the environment check failed (see above)"
        [ -f "$work/env.json" ] || return 1  # no torch/CUDA/mamlkit: nothing else can run
    fi

    # ------------------------------------------------------------ 2. choice
    step "2. the fastest batching for each preset's meta-step"
    if [ -n "$choice_file" ]; then
        cp "$choice_file" "$work/choice.json" && echo "reusing $choice_file"
    else
        run_for $(( 60 + deadline / 12 )) "$PY" benchmarks/meta_step.py --device "$device" \
            "${CHOICE_ARGS[@]}" --impls mamlkit-stacked mamlkit-vmap --json "$work/choice.json" \
            || fail "choice: the eager meta-step timing failed or ran out of time"
        if [ "$COMPILE_CAP" -gt 0 ]; then
            echo "--- torch.compile of the meta-loss, capped at ${COMPILE_CAP}s"
            run_for "$COMPILE_CAP" "$PY" benchmarks/meta_step.py --device "$device" \
                "${CHOICE_ARGS[@]}" --warmup 1 --impls mamlkit-vmap+compile --compile \
                --json "$work/choice-compile.json" \
                || echo "(the compile probe stopped: no compiled rows past what it wrote)"
        else
            echo "(no torch.compile probe in --smoke)"
        fi
        "$PY" - "$work/choice.json" "$work/choice-compile.json" <<'EOF'
import json, sys
from pathlib import Path
eager, compiled = (Path(p) for p in sys.argv[1:3])
merged = json.loads(eager.read_text()) if eager.is_file() else {}
for key, result in (json.loads(compiled.read_text()) if compiled.is_file() else {}).items():
    merged.setdefault(key, result)
    if merged[key] is not result:
        merged[key]["rows"].update(result["rows"])
        merged[key]["failed"].update(result["failed"])
eager.write_text(json.dumps(merged, indent=2) + "\n")
EOF
    fi
    cp "$work/choice.json" "$out/choice.json" 2>/dev/null

    # ------------------------------------------------------------ 3. train, eval, pack
    local window=$(( $(left) - R_START - R_EVAL - R_BENCH - R_FINAL )) preset pids=() mode
    step "3. plan: each preset's batching, and whether both fit the device side by side"
    "$PY" benchmarks/gpu_plan.py --choice "$work/choice.json" --env "$work/env.json" \
        --seconds "$window" ${resume_from:+--resume-from "$resume_from"} \
        $(for p in "${PRESETS[@]}"; do echo "--preset $p=${WORKLOAD[$p]}"; done) \
        --out "$work/plan.txt" || fail "plan: benchmarks/gpu_plan.py failed; auto batching"
    mode=$(sed -n 's/^mode //p' "$work/plan.txt" 2>/dev/null)
    if [ "$window" -lt 30 ] && [ "$smoke" = 0 ]; then
        fail "train: only ${window}s left for training; not trained"
    elif [ "$mode" != serial ]; then
        step "3. train ${PRESETS[*]} side by side, ${window}s of training each"
        for preset in "${PRESETS[@]}"; do
            train "$preset" "$window" 2>&1 | sed -u "s/^/[$preset] /" &
            pids+=($!)
        done
        for i in "${!PRESETS[@]}"; do
            wait "${pids[$i]}" || fail "${PRESETS[$i]}: training failed or was stopped"
        done
    else
        local n_left=${#PRESETS[@]} share
        for preset in "${PRESETS[@]}"; do
            share=$(( ($(left) - R_BENCH - R_FINAL - R_EVAL) / n_left - R_START ))
            step "3. train $preset alone (both do not fit the device at once), ${share}s"
            train "$preset" "$share" 2>&1 | sed -u "s/^/[$preset] /" \
                || fail "$preset: training failed or was stopped"
            n_left=$(( n_left - 1 ))
        done
    fi
    step "3. mamlkit eval, side by side"
    pids=()
    for preset in "${PRESETS[@]}"; do
        evaluate "$preset" 2>&1 | sed -u "s/^/[$preset] /" &
        pids+=($!)
    done
    for i in "${!PRESETS[@]}"; do
        wait "${pids[$i]}" || fail "${PRESETS[$i]}: eval failed or ran out of time"
    done
    for preset in "${PRESETS[@]}"; do pack "$preset" "$work/$preset"; done

    # ------------------------------------------------------------ 4. speed benchmark
    step "4. any-model meta-step benchmark on $device"
    local bench_s=$(( $(left) - R_FINAL ))
    if [ "$bench_s" -lt 20 ]; then
        fail "benchmark: only ${bench_s}s left; not run"
    else
        run_for "$bench_s" "$PY" benchmarks/any_model.py --device "$device" "${BENCH_ARGS[@]}" \
            --json "$work/any_model.json" --markdown "$out/any_model.md" \
            || fail "benchmark: benchmarks/any_model.py failed or ran out of time (rows so far kept)"
        cp "$work/any_model.json" "$out/any_model.json" 2>/dev/null
    fi
}

# train PRESET SECONDS: train it (or resume it) with a time limit of SECONDS, as planned
train() {
    local preset=$1 limit_s=$2 run="$work/$1" minutes_limit kind batching compiled
    minutes_limit=$("$PY" -c "print(round(max($limit_s, 6) / 60, 2))")
    read -r kind batching compiled < <(sed -n "s/^$preset //p" "$work/plan.txt" 2>/dev/null)
    local args=(--data-root "$data_root" --out "$run" --no-progress --set time_limit="$minutes_limit")
    if [ "$kind" = resume ]; then
        cp -r "$resume_from/$preset" "$run" && rm -f "$run/.lock" || return 1
        echo "resuming $resume_from/$preset for $minutes_limit min (batching=$batching" \
             "compile=$compiled, as it started)"
        args+=(--resume)
        for kv in "${RESUME_SET[@]+"${RESUME_SET[@]}"}"; do args+=(--set "$kv"); done
    else
        echo "training afresh for $minutes_limit min: batching=${batching:=auto}" \
             "compile=${compiled:=false} device=$device"
        args+=(--set batching="$batching" --set compile="$compiled" --set device="$device")
        for kv in "${TRAIN_SET[@]+"${TRAIN_SET[@]}"}"; do args+=(--set "$kv"); done
    fi
    run_for $(( limit_s + R_START + 60 )) "$PY" -m mamlkit train "$preset" "${args[@]}"
}

# evaluate PRESET: mamlkit eval of its run directory (the run's eval_tasks: 600, 4 in --smoke)
evaluate() {
    local run="$work/$1"
    [ -f "$run/checkpoints/latest" ] || { echo "no checkpoint to evaluate"; return 1; }
    run_for $(( R_EVAL + 30 )) "$PY" -m mamlkit eval "$run" --no-progress
}

# pack PRESET RUN: the files a later session commits, as OUT/PRESET.tar.gz
pack() {
    local preset=$1 run=$2 files=() f latest
    for f in config.yaml metrics.jsonl run.json eval.json best; do
        [ -e "$run/$f" ] && files+=("$f")
    done
    if [ -f "$run/checkpoints/latest" ]; then
        latest=$(cat "$run/checkpoints/latest")
        files+=(checkpoints/latest "checkpoints/$latest")
    fi
    if [ ${#files[@]} -eq 0 ]; then
        fail "$preset: no run directory to pack"
        return
    fi
    tar czf "$out/$preset.tar.gz" -C "$run" "${files[@]}" \
        && echo "packed $out/$preset.tar.gz ($(du -h "$out/$preset.tar.gz" | cut -f1)):" \
                "${files[*]}" \
        || fail "$preset: packing failed"
}

summarize() {
    step "summary"
    "$PY" - "$work" "$out/summary.json" "$device" "$minutes" "$smoke" "$SECONDS" \
        "${failures[@]+"${failures[@]}"}" <<'EOF'
import json, sys
from pathlib import Path

import yaml

work, target = Path(sys.argv[1]), Path(sys.argv[2])
device, minutes, smoke, seconds, failures = sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1", \
    int(sys.argv[6]), sys.argv[7:]
read = lambda p: json.loads(p.read_text()) if p.is_file() else None  # noqa: E731
summary = {"device": device, "minutes": minutes, "smoke": smoke, "seconds": seconds,
           "env": read(work / "env.json"), "failures": failures, "runs": {}}
for preset in ("omniglot-20w1s", "omniglot-20w5s"):
    run = work / preset
    if not (run / "config.yaml").is_file():
        continue
    config = yaml.safe_load((run / "config.yaml").read_text())
    flat = {k: v for section in config.values() if isinstance(section, dict)
            for k, v in section.items()} if all(isinstance(v, dict) for v in config.values()) \
        else config
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
               if line.strip()] if (run / "metrics.jsonl").is_file() else []
    val = [r for r in records if "val_post" in r]
    evaluation = read(run / "eval.json")
    summary["runs"][preset] = {
        "batching": flat.get("batching"), "compile": flat.get("compile"),
        "iterations": records[-1]["iteration"] if records else 0,
        "train_seconds": records[-1]["seconds"] if records else None,
        "last_val_post": val[-1]["val_post"] if val else None,
        "eval": None if evaluation is None else {
            "num_tasks": evaluation["num_tasks"], "iteration": evaluation.get("iteration"),
            "steps": evaluation["steps"]}}
target.write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
EOF
}

log="$out/gpu_paper_runs.log"
{
    main
    summarize
    rm -rf "$work"
    if [ ${#failures[@]} -gt 0 ]; then
        echo "finished in ${SECONDS}s with ${#failures[@]} failure(s):"
        printf '  %s\n' "${failures[@]}"
        exit 1
    fi
    echo "finished in ${SECONDS}s; files in $out:"
    ls -l "$out"
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
