"""The MAML family at the presets' budgets, three seeds each: is meta-learning worth it here?

Every learner (MAML, FO-MAML, Meta-SGD, ANIL, MAML++, Reptile, iMAML) and the pretrained
baselines train on the same task distributions with the same budget and are evaluated with
``mamlkit.run.evaluate`` on the same held-out tasks:

- sinusoid at the ``sinusoid`` preset's budget (K = 10, 20000 iterations, meta-batch 25); each
  learner takes its ``sinusoid-<variant>`` preset's own keys; the pretrained baseline is joint
  training (``inner_lr=0``) fine-tuned at the evaluation step size.
- Omniglot 5-way 1-shot at ``omniglot-5w1s-quick``'s budget (conv4 with 32 filters, 5 queries
  per class, meta-batch 16, 5000 iterations); each learner takes its ``omniglot-5w1s-<variant>``
  preset's keys; the pretrained baseline is ``algorithm=pretrained`` (a classifier over all
  training characters, then a linear head, a fine-tune and nearest class mean per task).
- Omniglot 20-way 1-shot at a quick budget (the same network and queries, meta-batch 16,
  500 iterations, 5 inner steps of 0.1 as in the paper's 20-way set-up).

Each (set-up, learner, seed) is one record under ``--out``/records, written when it finishes:
the benchmark resumes where it stopped and may run in several processes on disjoint set-ups.
Cells are the mean over seeds ± the 95% interval across seeds (Student's t, 2 degrees of freedom
for 3 seeds), after 1 inner step and after the learner's trained number of steps.

    python benchmarks/family.py --setup sinusoid               # 21 runs, ~1 h on one core
    python benchmarks/family.py --setup omniglot-5w1s --seeds 0 # one seed of every learner
    python benchmarks/family.py --render                        # the table from the records

iMAML on Omniglot is left out unless ``--include-slow`` (``NOT_RUN``: its 16 L-BFGS iterations
per task make the quick budgets hours per seed on a CPU); its row says so. ``--iterations N``
runs a smaller budget into records of their own, shown as rows "learner (N it.)", e.g. iMAML for
about the time MAML trains.
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
from typing import Any

import torch

from mamlkit.run import checkpoint, evaluate
from mamlkit.run.compare import mean_ci95_across
from mamlkit.run.config import Config, resolve
from mamlkit.run.errors import RunDirectoryError
from mamlkit.run.load import load
from mamlkit.run.loop import TrainingDiverged, train
from mamlkit.run.rundir import read_config

ROOT = Path(__file__).resolve().parent
VARIANTS = ["MAML", "FO-MAML", "Meta-SGD", "ANIL", "MAML++", "Reptile", "iMAML", "pretrained"]
SUFFIX = {"Meta-SGD": "-metasgd", "ANIL": "-anil", "MAML++": "-mamlpp", "Reptile": "-reptile",
          "iMAML": "-imaml"}
# keys a variant's preset sets on top of MAML's (copied onto the set-up's base)
FAMILY_KEYS = ("algorithm", "adapt", "inner_steps", "inner_lr", "msl", "msl_iterations", "lslr",
               "bnwb", "fo_iterations", "cosine_meta_lr", "min_meta_lr", "reptile_data",
               "imaml_lambda", "imaml_cg_steps", "imaml_max_grad_norm")
QUIET = {"log_every": 10_000_000, "val_every": 10_000_000}
SETUPS: dict[str, dict[str, Any]] = {
    "sinusoid": {"base": "sinusoid", "family": "sinusoid", "metric": "mse",
                 "overrides": {"checkpoint_every": 2000}},
    "omniglot-5w1s": {"base": "omniglot-5w1s-quick", "family": "omniglot-5w1s",
                      "metric": "accuracy", "overrides": {"checkpoint_every": 500}},
    "omniglot-20w1s": {"base": "omniglot-20w1s", "family": "omniglot-5w1s", "metric": "accuracy",
                       "overrides": {"hidden": [32], "query_shots": 5, "iterations": 500,
                                     "checkpoint_every": 50}},
}


# (set-up, learner) not run by default, with the reason the table gives instead of numbers
NOT_RUN = {
    ("omniglot-5w1s", "iMAML"): "not run at this budget: about 4 h per seed on this CPU (16 "
                                "L-BFGS iterations per task; docs/family.md)",
    ("omniglot-20w1s", "iMAML"): "not run at this budget: about 2 h per seed on this CPU (16 "
                                 "L-BFGS iterations per 20-way task; docs/family.md)",
}


def variant_overrides(variant: str, setup: dict[str, Any]) -> dict[str, Any]:
    """The set-up's keys plus what the variant's preset changes relative to MAML's."""
    overrides = {**QUIET, **setup["overrides"]}
    if variant == "FO-MAML":
        overrides["first_order"] = True
    elif variant == "pretrained":
        if setup["metric"] == "mse":
            overrides["inner_lr"] = 0.0  # joint training; evaluation fine-tunes at eval_inner_lr
        else:
            overrides["algorithm"] = "pretrained"
    elif variant in SUFFIX:
        family, unused = setup["family"], {"data_root": "unused"}
        preset, base = resolve(family + SUFFIX[variant], unused), resolve(family, unused)
        overrides.update({k: getattr(preset, k) for k in FAMILY_KEYS
                          if getattr(preset, k) != getattr(base, k)})
        if setup["base"] == "omniglot-20w1s":  # the 20-way set-up keeps its 5 steps of 0.1
            overrides.pop("inner_lr", None)
            overrides["inner_steps"] = max(overrides.get("inner_steps", 5), 5)
    if overrides.get("algorithm") == "mamlpp":  # annealing over 10% of the budget, as presets do
        iterations = overrides.get("iterations") or resolve(setup["base"], {
            "data_root": "unused"}).iterations
        overrides["msl_iterations"] = overrides["fo_iterations"] = iterations // 10
    return overrides


def run_name(setup: str, variant: str, seed: int, iterations: int | None = None,
             sep: str = "--") -> str:
    """``setup--variant--seedN``, with ``--Nit`` for a smaller budget than the set-up's (run
    directories use ``sep="-"``)."""
    parts = [setup, variant, f"seed{seed}"] + ([f"{iterations}it"] if iterations else [])
    return sep.join(parts)


def record_path(out: Path, setup: str, variant: str, seed: int,
                iterations: int | None = None) -> Path:
    return out / "records" / f"{run_name(setup, variant, seed, iterations)}.json"


def interrupted_at(run_dir: Path, config: Config) -> int | None:
    """The iteration of an interrupted run of the same config in ``run_dir`` (to resume it
    exactly instead of starting over), or None."""
    if not (run_dir / "config.yaml").is_file() or read_config(run_dir / "config.yaml") != config:
        return None
    try:  # the checkpoint ``train(resume=True)`` would start from
        return checkpoint.usable(run_dir).iteration or None
    except RunDirectoryError:  # none reads back: start over
        return None


def run_one(setup_name: str, variant: str, seed: int, data_root: str, workdir: Path,
            eval_tasks: int, iterations: int | None = None) -> dict[str, Any]:
    """Train one (set-up, learner, seed) and evaluate it after 0, 1, trained and 10 steps."""
    setup = SETUPS[setup_name]
    if iterations:  # a quick look at a smaller budget (recorded with the result)
        setup = {**setup, "overrides": {**setup["overrides"], "iterations": iterations,
                                        "checkpoint_every": iterations}}
    overrides = {**variant_overrides(variant, setup), "seed": seed}
    if setup["metric"] == "accuracy":
        overrides["data_root"] = data_root
    config = resolve(setup["base"], overrides)
    trained = max(config.inner_steps, 1)
    steps = sorted({0, 1, trained, 10 if setup["metric"] == "mse" else trained})
    record = {"setup": setup_name, "variant": variant, "seed": seed, "base": setup["base"],
              "overrides": {k: v for k, v in overrides.items() if k != "data_root"},
              "trained_steps": trained, "metric": setup["metric"], "threads": 1,
              "torch": torch.__version__}
    if iterations:
        record["budget_iterations"] = iterations
    run_dir = workdir / run_name(setup_name, variant, seed, iterations, sep="-")
    resumed_from = interrupted_at(run_dir, config)
    if resumed_from is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        record["resumed_from"] = resumed_from  # train_seconds counts this process only
    began = time.perf_counter()
    try:
        result = train(None if resumed_from else config, run_dir, resume=bool(resumed_from),
                       progress=False)
    except TrainingDiverged as error:  # a result of its own: the cell says so
        return {**record, "diverged": str(error),
                "train_seconds": round(time.perf_counter() - began, 1)}
    began = time.perf_counter()
    scores = evaluate.evaluate(load(run_dir), num_tasks=eval_tasks, steps=steps)
    return {**record, "iterations": result.iteration, "train_seconds": round(result.seconds, 1),
            "eval_seconds": round(time.perf_counter() - began, 1), "scores": scores}


def label(record: dict[str, Any]) -> str:
    """The learner, with its budget when smaller than the set-up's."""
    budget = record.get("budget_iterations")
    return record["variant"] + (f" ({budget} it.)" if budget else "")


def rows_of(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Table rows of one record: the learner, or the pretrained baseline's three evaluations."""
    scores = record.get("scores")
    if scores is None:
        return {label(record): {}}
    if not scores.get("baselines"):
        return {label(record): scores["steps"]}
    return {"pretrained: fine-tune": scores["steps"],
            **{f"pretrained: {name}": row["steps"] for name, row in scores["baselines"].items()}}


def cell(records: list[dict[str, Any]], row: str, step: str, scale: float) -> str:
    """Mean ± 95% t-interval across seeds; why not, when a seed diverged or is missing."""
    if any(r.get("diverged") for r in records):
        return f"training diverged ({sum(bool(r.get('diverged')) for r in records)} seeds)"
    found = [rows_of(r).get(row, {}).get(step) for r in records]
    values = [f["mean"] for f in found if f is not None and f.get("mean") is not None]
    if not values:
        return ""
    if not all(math.isfinite(v) for v in values) or len(values) < len(found):
        return "non-finite in a seed"
    mean, ci = mean_ci95_across(values)
    if len(values) == 1:  # one seed: the evaluation's own interval, over tasks
        ci = found[0].get("ci95") or 0.0
    digits = 1 if scale == 100.0 else 3
    if 1e-9 < ci * scale < 0.5 * 10 ** -digits:  # seeds that agree closely (not rounding noise)
        digits += 1
    return f"{mean * scale:.{digits}f} ± {ci * scale:.{digits}f}"


def full_train_seconds(record: dict[str, Any]) -> float:
    """The run's training time; a resumed run's is its last process's, scaled to the whole
    budget (an estimate, marked ≈ in the table)."""
    start = record.get("resumed_from") or 0
    iterations = record.get("iterations") or 0
    if not start or iterations <= start:
        return record["train_seconds"]
    return record["train_seconds"] * iterations / (iterations - start)


def table(records: list[dict[str, Any]], setup: str) -> list[str]:
    mine = [r for r in records if r["setup"] == setup]
    if not mine:
        return []
    scale = 100.0 if SETUPS[setup]["metric"] == "accuracy" else 1.0
    extra = "10" if SETUPS[setup]["metric"] == "mse" else None
    lines = [f"### {setup} ({'MSE' if scale == 1.0 else 'accuracy, %'})", "",
             "| learner | seeds | before | 1 step | trained steps (k) | "
             + ("10 steps | " if extra else "") + "train time |",
             "|---|---|---|---|---|" + ("---|" if extra else "") + "---|"]
    for variant in VARIANTS:
        budgets = sorted({r.get("budget_iterations") or 0 for r in mine if r["variant"] == variant})
        if 0 not in budgets and (setup, variant) in NOT_RUN:  # a row that says why it is empty
            lines.append(f"| {variant} | 0 | {NOT_RUN[setup, variant]} |"
                         + " |" * (4 if extra else 3))
        for budget in budgets:
            group = sorted((r for r in mine if r["variant"] == variant
                            and (r.get("budget_iterations") or 0) == budget),
                           key=lambda r: r["seed"])
            lines += [row_line(group, row, scale, extra) for row in rows_of(group[0])]
    return lines


def row_line(group: list[dict[str, Any]], row: str, scale: float, extra: str | None) -> str:
    """One table row: ``row`` of the records ``group`` (one learner and budget, its seeds)."""
    k = str(group[0]["trained_steps"])
    before = "" if "head" in row or "nearest" in row else cell(group, row, "0", scale)
    cells = [row, str(len(group)), before, cell(group, row, "1", scale),
             f"{cell(group, row, k, scale)} ({k})"]
    if extra:
        cells.append(cell(group, row, extra, scale))
    minutes = sum(map(full_train_seconds, group)) / len(group) / 60
    resumed = any(r.get("resumed_from") for r in group)
    cells.append(f"{'≈ ' if resumed else ''}{minutes:.1f} min")
    return "| " + " | ".join(cells) + " |"


def markdown(records: list[dict[str, Any]]) -> str:
    parts = ["# The MAML family at the presets' budgets", "",
             "Written by `python benchmarks/family.py`; set-ups and budgets in its docstring. "
             "Mean over seeds ± 95% interval across seeds (Student's t; with one seed, the "
             "interval over its tasks); each seed is evaluated "
             "on the same held-out tasks (600 for Omniglot, 600 for sinusoid). Train time: "
             "mean per seed on a shared 2-core CPU, one torch thread (≈: a run resumed after "
             "an interruption, its last process's time scaled to the whole budget).", ""]
    for setup in SETUPS:
        lines = table(records, setup)
        if lines:
            parts += [*lines, ""]
    return "\n".join(parts)


def load_records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setup", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--eval-tasks", type=int, default=600)
    p.add_argument("--data-root", default=os.environ.get(
        "MAMLKIT_OMNIGLOT_ROOT", str(ROOT.parent.parent / "shared" / "data" / "omniglot")))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "family")
    p.add_argument("--workdir", type=Path, default=None, help="run directories (a temp folder)")
    p.add_argument("--render", action="store_true", help="only rewrite the table")
    p.add_argument("--iterations", type=int,
                   help="a smaller budget, recorded and shown as a row of its own")
    p.add_argument("--include-slow", action="store_true",
                   help="also run what NOT_RUN leaves out at the full budget (iMAML on Omniglot)")
    args = p.parse_args()
    torch.set_num_threads(1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mamlkit-family-"))
    for setup in [] if args.render else args.setup:
        if SETUPS[setup]["metric"] == "accuracy" and not (
                Path(args.data_root) / "images_background.zip").is_file():
            print(f"skipping {setup}: no images_background.zip in {args.data_root}")
            continue
        for seed in args.seeds:
            for variant in args.variants:
                path = record_path(args.out, setup, variant, seed, args.iterations)
                slow = (setup, variant) in NOT_RUN and not args.iterations
                if path.is_file() or (slow and not args.include_slow):
                    continue
                record = run_one(setup, variant, seed, args.data_root, workdir, args.eval_tasks,
                                 args.iterations)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=1) + "\n")
                print(f"{setup} {variant} seed {seed}: {record.get('train_seconds')} s",
                      flush=True)
                (args.out / "README.md").write_text(markdown(load_records(args.out)))
    text = markdown(load_records(args.out))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
