"""The MAML family on equal terms: same tasks, same iteration budget, same evaluation protocol.

Trains MAML, first-order MAML, Meta-SGD, ANIL, MAML++, Reptile and iMAML (each from its preset,
``sinusoid-<variant>`` / ``omniglot-5w1s-<variant>``, so the numbers describe what a user gets)
on sinusoid regression (K = 5, 10, 20) and on the quick Omniglot 5-way and 20-way 1-shot set-ups,
then evaluates every run with ``mamlkit.evaluate`` on the same held-out tasks (mean ± 95% CI).
Budgets are reduced to fit two shared CPU cores; they are written into the results.

    python benchmarks/family.py                       # everything (about 30 min on 2 cores)
    python benchmarks/family.py --only sinusoid --sinusoid-iterations 500   # a quick look

Results go to ``benchmarks/results/family.json`` and ``family.md`` (written after every run, so
an interrupted benchmark keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mamlkit.run import evaluate
from mamlkit.run.config import resolve
from mamlkit.run.load import load
from mamlkit.run.loop import TrainingDiverged, train

VARIANTS = ["MAML", "FO-MAML", "Meta-SGD", "ANIL", "MAML++", "Reptile", "iMAML"]
SUFFIX = {"MAML": "", "FO-MAML": "", "Meta-SGD": "-metasgd", "ANIL": "-anil",
          "MAML++": "-mamlpp", "Reptile": "-reptile", "iMAML": "-imaml"}
# Omniglot variant settings from the omniglot-5w1s-<variant> presets that are not MAML's
FAMILY_KEYS = ("algorithm", "adapt", "inner_steps", "inner_lr", "msl", "msl_iterations", "lslr",
               "bnwb", "fo_iterations", "cosine_meta_lr", "min_meta_lr", "reptile_data",
               "imaml_lambda", "cg_steps")
QUIET = {"log_every": 10_000_000, "val_every": 10_000_000}
ROOT = Path(__file__).resolve().parent


def sinusoid_setups(iterations: int) -> list[dict]:
    return [{"name": f"sinusoid K={k}", "metric": "mse", "steps": [1, 10],
             "preset": lambda v: "sinusoid" + SUFFIX[v],
             "overrides": {"shots": k, "iterations": iterations,
                           "checkpoint_every": iterations, **QUIET}}
            for k in (5, 10, 20)]


def omniglot_setups(data_root: str, iterations: int, iterations_20w: int, meta_batch: int,
                    hidden: int) -> list[dict]:
    common = {"data_root": data_root, "hidden": [hidden], "query_shots": 5,
              "meta_batch_size": meta_batch, **QUIET}
    return [
        {"name": "Omniglot 5w1s", "metric": "accuracy", "steps": [1, 5],
         "base": "omniglot-5w1s-quick",
         "overrides": {**common, "iterations": iterations, "checkpoint_every": iterations}},
        {"name": "Omniglot 20w1s", "metric": "accuracy", "steps": [1, 5],
         "base": "omniglot-20w1s",
         "overrides": {**common, "iterations": iterations_20w,
                       "checkpoint_every": iterations_20w}},
    ]


def omniglot_variant(variant: str, setup: dict) -> dict:
    """The variant's keys from its 5w1s preset on top of the set-up (20-way keeps 5 steps)."""
    overrides = dict(setup["overrides"])
    if variant == "FO-MAML":
        overrides["first_order"] = True
    elif SUFFIX[variant]:
        preset = resolve("omniglot-5w1s" + SUFFIX[variant], {"data_root": "unused"})
        base = resolve("omniglot-5w1s", {"data_root": "unused"})
        for key in FAMILY_KEYS:
            if getattr(preset, key) != getattr(base, key):
                overrides[key] = getattr(preset, key)
        if setup["base"] == "omniglot-20w1s":  # 20-way already takes 5 steps of 0.1
            overrides.pop("inner_lr", None)
            overrides["inner_steps"] = max(overrides.get("inner_steps", 5), 5)
    # annealing lengths scale with the (reduced) budget: 10% for MSL and first order
    if overrides.get("algorithm") == "mamlpp":
        overrides["msl_iterations"] = overrides["fo_iterations"] = overrides["iterations"] // 10
    return overrides


def run_one(variant: str, setup: dict, workdir: Path, eval_tasks: int) -> dict:
    if "preset" in setup:
        preset, overrides = setup["preset"](variant), dict(setup["overrides"])
        if variant == "FO-MAML":
            overrides["first_order"] = True
        if variant == "MAML++":  # annealing over 10% of the reduced budget
            overrides["msl_iterations"] = overrides["fo_iterations"] = overrides["iterations"] // 10
    else:
        preset, overrides = setup["base"], omniglot_variant(variant, setup)
    config = resolve(preset, overrides)
    run_dir = workdir / f"{setup['name']}-{variant}".replace(" ", "_").replace("=", "")
    shutil.rmtree(run_dir, ignore_errors=True)
    began = time.perf_counter()
    try:
        result = train(config, run_dir, progress=False)
    except TrainingDiverged as error:  # reported as a result: it is one
        return {"variant": variant, "setup": setup["name"], "preset": preset,
                "overrides": {k: v for k, v in overrides.items() if k != "data_root"},
                "diverged": str(error), "train_seconds": round(time.perf_counter() - began, 1),
                "metric": setup["metric"], "steps": {}}
    learner = load(run_dir)
    began = time.perf_counter()
    scores = evaluate.evaluate(learner, num_tasks=eval_tasks, steps=[0, *setup["steps"]])
    return {"variant": variant, "setup": setup["name"], "preset": preset,
            "overrides": {k: v for k, v in overrides.items() if k != "data_root"},
            "iterations": result.iteration, "train_seconds": round(result.seconds, 1),
            "eval_seconds": round(time.perf_counter() - began, 1),
            "inner_lr": scores["inner_lr"], "metric": scores["metric"],
            "num_tasks": scores["num_tasks"],
            "steps": {k: {m: x if math.isfinite(x) else None for m, x in v.items()}
                      for k, v in scores["steps"].items()}}


def cell(result: dict, step: int) -> str:
    if result.get("diverged"):
        return "training diverged"
    scale = 100.0 if result["metric"] == "accuracy" else 1.0
    s = result["steps"][str(step)]
    if s["mean"] is None or not math.isfinite(s["mean"]) or s["mean"] > 1e3:
        return "diverged"
    digits = 1 if scale == 100.0 else 3
    return f"{s['mean'] * scale:.{digits}f} ± {s['ci95'] * scale:.{digits}f}"


def _table(results: list[dict], setups: list[str]) -> list[str]:
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in results)]
    by = {(r["setup"], r["variant"]): r for r in results}
    steps_of = {s: next((r["steps"] for r in results if r["setup"] == s and r["steps"]), {})
                for s in setups}
    header = ["variant"]
    for s in setups:
        header += [f"{s}, {k} step{'s' if k != '1' else ''}" for k in steps_of[s] if k != "0"]
        header.append("time")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in variants:
        row = [v]
        for s in setups:
            r = by.get((s, v))
            row += [cell(r, int(k)) if r else "" for k in steps_of[s] if k != "0"]
            row.append(f"{r['train_seconds']:.0f} s" if r else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(results: list[dict], meta: dict) -> str:
    """One table for regression (MSE), one for classification (accuracy)."""
    setups = list(dict.fromkeys(r["setup"] for r in results))
    parts = []
    for metric in ("mse", "accuracy"):
        chosen = [s for s in setups if any(r["setup"] == s and r["metric"] == metric
                                           for r in results)]
        if chosen:
            parts.append("\n".join(_table(results, chosen)))
    note = (f"\nSinusoid: MSE, {meta['sinusoid_iterations']} iterations per run. Omniglot: "
            f"accuracy (%), {meta['omniglot_iterations']} (5-way) and "
            f"{meta['omniglot_20w_iterations']} (20-way) iterations, conv4 with "
            f"{meta['hidden']} filters, meta-batch {meta['meta_batch']}, 5 queries per class. "
            f"{meta['eval_tasks']} held-out tasks per cell, mean ± 95% CI; time = training "
            "wall time on a shared 2-core CPU, one torch thread.\n")
    return "\n\n".join(parts) + "\n" + note


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["sinusoid", "omniglot"], default=None)
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--sinusoid-iterations", type=int, default=3000)
    p.add_argument("--omniglot-iterations", type=int, default=300)
    p.add_argument("--omniglot-20w-iterations", type=int, default=100)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--eval-tasks", type=int, default=600)
    p.add_argument("--data-root", default=os.environ.get("MAMLKIT_OMNIGLOT_ROOT",
                                                         str(ROOT.parent.parent / "shared"
                                                             / "data" / "omniglot")))
    p.add_argument("--out", default=str(ROOT / "results" / "family"))
    p.add_argument("--render", action="store_true",
                   help="only rewrite the markdown table from the output JSON")
    p.add_argument("--keep", action="store_true",
                   help="reuse results already in the output JSON for the same set-up and variant")
    p.add_argument("--workdir", default=None, help="run directories (default: a temp folder)")
    args = p.parse_args()
    out = Path(args.out)
    if args.render:
        saved = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(markdown(saved["results"], saved["meta"]))
        print(out.with_suffix(".md").read_text())
        return
    torch.set_num_threads(1)
    meta = {"sinusoid_iterations": args.sinusoid_iterations,
            "omniglot_iterations": args.omniglot_iterations,
            "omniglot_20w_iterations": args.omniglot_20w_iterations,
            "meta_batch": args.meta_batch, "hidden": args.hidden, "eval_tasks": args.eval_tasks,
            "torch": torch.__version__, "threads": 1}
    setups = [] if args.only == "omniglot" else sinusoid_setups(args.sinusoid_iterations)
    if args.only != "sinusoid":
        if (Path(args.data_root) / "images_background.zip").is_file():
            setups += omniglot_setups(args.data_root, args.omniglot_iterations,
                                      args.omniglot_20w_iterations, args.meta_batch,
                                      args.hidden)
        else:
            print(f"skipping Omniglot: no images_background.zip in {args.data_root}")
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mamlkit-family-"))
    results: list[dict] = []
    done = {}
    if args.keep and out.with_suffix(".json").is_file():  # reuse finished runs of an earlier call
        done = {(r["setup"], r["variant"]): r
                for r in json.loads(out.with_suffix(".json").read_text())["results"]}
    for setup in setups:
        for variant in args.variants:
            record = done.get((setup["name"], variant)) or run_one(variant, setup, workdir,
                                                                   args.eval_tasks)
            results.append(record)
            print(f"{setup['name']:>16} {variant:>9}: "
                  + "  ".join(f"{k}: {cell(record, int(k))}" for k in record["steps"])
                  + f"  ({record['train_seconds']} s train, {record.get('eval_seconds')} s eval)"
                  + (f"  {record['diverged']}" if record.get("diverged") else ""),
                  flush=True)
            out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results},
                                                           indent=1) + "\n")
            out.with_suffix(".md").write_text(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
