"""Why second-order meta-RL shrinks the policy's standard deviation: the meta-gradient on log_std.

For fixed sampled trajectories the inner VPG step on the mean network scales as ``1/sigma^2``
(``d log pi / d mu = (a - mu) / sigma^2``), so ``d theta'_mean / d log_sigma = -2 * step``. The
second-order meta-gradient therefore carries, on log_std, the extra term
``-2 * <dL_post/dtheta'_mean, step>``: positive (gradient descent lowers sigma) whenever the
inner step helps the query loss. First order drops it. This script measures, on fresh meta-batches
of a run's policy (or the untrained one), the outer surrogate's gradient on log_std with second
and first order, their difference, and that predicted term, and the second-order gradient on
log_std under each estimator of the pre-update sampling term (``estimator``: maml, dice, lvc;
``rl/estimators.py``), which adds what a larger sigma is worth to the support samples.

``--curves`` instead summarises finished runs (std per iteration, validation returns, and the
held-out evaluation when ``eval.json`` is there) into one JSON, to compare estimators.

    python benchmarks/rl_std_collapse.py [RUN_DIR] [--batches 5]
    python benchmarks/rl_std_collapse.py --curves RUN_DIR [RUN_DIR ...] [--out FILE] [--png F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mamlkit.functional.task_batch import TaskBatch
from mamlkit.rl.estimators import ESTIMATORS, inner_loss
from mamlkit.rl.losses import gaussian_log_prob, surrogate_loss
from mamlkit.run import config as config_lib
from mamlkit.run.adapted import adapted_policy, query_actions
from mamlkit.run.build import build_tasks
from mamlkit.run.load import load, untrained
from mamlkit.run.metrics import read_metrics


def post_loss(policy, query, params, batched):
    """The outer surrogate of the query trajectories with ``params`` (stacked if batched)."""
    from mamlkit.functional import Batching, forward

    if batched:
        mean, std = Batching("vmap").map(lambda ops, p, q: query_actions(ops, p, q), policy, {},
                                         None, params, query, batched_params=True)
    else:
        mean, std = forward(policy, params, {}, query.observations)
    logp = gaussian_log_prob(mean, std, query.actions)
    return surrogate_loss(logp, logp.detach(), query.advantages, query.mask)


def log_std_gradient(learner, batch: TaskBatch) -> float:
    """The outer surrogate's gradient on log_std through the adaptation on ``batch``."""
    mean, std = learner.map_adapted(batch, query_actions)
    logp = gaussian_log_prob(mean, std, batch.query.actions)
    loss = surrogate_loss(logp, logp.detach(), batch.query.advantages, batch.query.mask)
    return torch.autograd.grad(loss, learner.model.log_std)[0].sum().item()


def predicted_mean_term(learner, rl) -> float:
    """``-2 <dL_post/dtheta'_mean, inner step on the mean network>`` (see the docstring)."""
    policy = learner.model
    theta = {n: p.detach() for n, p in policy.named_parameters()}
    stepped, _ = learner.adapted_params(rl.tasks.support, 1)
    stepped = {n: p.detach().requires_grad_(True) for n, p in stepped.items()}
    loss = post_loss(policy, rl.tasks.query, stepped, True)
    names = [n for n in stepped if n != "log_std"]
    g_post = torch.autograd.grad(loss, [stepped[n] for n in names])
    inner_step = [stepped[n].detach() - theta[n] for n in names]
    return (-2 * sum((g * s).sum() for g, s in zip(g_post, inner_step, strict=True))).item()


def gradients(learner, tasks, generator, batches: int) -> list[dict]:
    """Per fresh meta-batch: log_std gradients (second order with the run's estimator and
    with each estimator, first order)."""
    config, rows = learner.config, []
    for _ in range(batches):
        rl = tasks.collect(tasks.sample_tasks(config.meta_batch_size, generator), generator,
                           adapted_policy(learner), 1)
        grads = {}
        for name, fo in (("second_order", False), ("first_order", True)):
            learner.first_order = fo
            grads[name] = log_std_gradient(learner, rl.tasks)
        learner.first_order = False
        for estimator in ESTIMATORS:
            batch = TaskBatch(rl.tasks.support, rl.tasks.query, inner_loss(estimator))
            grads[f"second_order_{estimator}"] = log_std_gradient(learner, batch)
        # the predicted term is REINFORCE's (maml) second-order part
        difference = grads["second_order_maml"] - grads["first_order"]
        rows.append({**grads, "difference": difference,
                     "predicted_mean_term": predicted_mean_term(learner, rl),
                     "pre_return": rl.pre_return, "post_return": rl.post_return})
    return rows


def curves(run_dir: str) -> dict:
    """One run's std per iteration, validation returns and held-out evaluation."""
    import yaml

    config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    records = read_metrics(run_dir)
    std = [round(r["std"], 4) for r in records if "std" in r]
    val = [{k: r[k] for k in ("iteration", "std", "val_pre", "val_pre_ci95", "val_post",
                              "val_post_ci95") if k in r} for r in records if "val_post" in r]
    path = Path(run_dir) / "eval.json"
    evaluation = json.loads(path.read_text()) if path.is_file() else None
    return {"run": str(run_dir), "estimator": config.get("estimator", "maml"),
            "min_std": config.get("min_std"), "outer": config.get("outer"),
            "first_order": config.get("first_order"), "iterations": len(std),
            "std_per_iteration": std, "min_std_seen": min(std) if std else None,
            "final_std": std[-1] if std else None, "validation": val,
            "seconds": records[-1].get("seconds") if records else None,
            "eval": evaluation}


def plot_std(runs: list[dict], path: str) -> None:
    """The policy std per iteration of each run, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for run in runs:
        label = f"{Path(run['run']).name} ({run['estimator']}, min_std {run['min_std']:g})"
        ax.plot(range(1, run["iterations"] + 1), run["std_per_iteration"], label=label)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("policy std")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--curves", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out")
    parser.add_argument("--png", help="with --curves: a plot of the std per iteration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.curves:
        runs = [curves(r) for r in args.curves]
        text = json.dumps({"runs": runs}, indent=1)
        if args.out:
            Path(args.out).write_text(text + "\n")
        if args.png:
            plot_std(runs, args.png)
        print(text)
        return
    learner = load(args.run) if args.run else untrained(config_lib.resolve("nav2d", {}))
    tasks = build_tasks(learner.config, "train")
    rows = gradients(learner, tasks, torch.Generator().manual_seed(123), args.batches)
    print(json.dumps({"policy": learner.checkpoint, "std": learner.model.log_std.exp().tolist(),
                      "batches": rows}, indent=1))


if __name__ == "__main__":
    main()
