"""The evaluation protocol: many held-out tasks, query metric before and after k inner steps.

Every run is evaluated on the same tasks (drawn from a fixed seed in fixed-size chunks), and each
figure is a mean with its 95% confidence interval (1.96 standard errors over tasks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mamlkit.algorithms import MAML, choose_batching
from mamlkit.build import EVAL_SEED, build_tasks, device_of
from mamlkit.tasks import generator_from

EVAL_CHUNK = 100  # tasks per sampling call; fixed so that every run sees the same tasks


def mean_ci95(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return {"mean": values.mean().item(), "ci95": 1.96 * std / math.sqrt(n)}


def evaluate(learner: MAML, num_tasks: int | None = None, steps: list[int] | None = None,
             inner_lr: float | None = None) -> dict[str, Any]:
    """Query metric of ``num_tasks`` held-out tasks after each number of inner steps.

    Returns ``{"metric", "num_tasks", "inner_lr", "steps": {"k": {"mean", "ci95"}}}``.
    Learners with learned inner rates (Meta-SGD, MAML++ with LSLR) adapt with those: the
    scalar ``inner_lr``/``eval_inner_lr`` is ignored and ``"inner_lr"`` reads ``"learned"``.
    """
    config = learner.config
    num_tasks = num_tasks or config.eval_tasks
    steps = steps or config.eval_steps
    inner_lr = inner_lr if inner_lr is not None else (config.eval_inner_lr or config.inner_lr)
    learned = getattr(learner, "learned_rates", False)
    tasks = build_tasks(config, "test")
    device = device_of(config)
    learner.to(device)
    if config.batching == "auto":  # the fastest strategy depends on where the model now is
        learner.batching = choose_batching(learner.model)
    generator = generator_from(EVAL_SEED)
    curves = []
    for start in range(0, num_tasks, EVAL_CHUNK):
        batch = tasks.sample(min(EVAL_CHUNK, num_tasks - start), generator)
        # evaluate a meta-batch at a time: memory as in training, same tasks for every run
        for piece in range(0, batch.num_tasks, config.meta_batch_size):
            part = batch[piece:piece + config.meta_batch_size].to(device)
            curves.append(learner.adaptation_curve(part, steps, tasks.metric,
                                                   inner_lr=None if learned else inner_lr))
    curve = torch.cat(curves, dim=1).cpu()
    return {
        "metric": tasks.metric,
        "num_tasks": num_tasks,
        "inner_lr": "learned" if learned else inner_lr,
        "steps": {str(s): mean_ci95(curve[i]) for i, s in enumerate(steps)},
    }


def write(run_dir: Path, result: dict[str, Any]) -> Path:
    path = Path(run_dir) / "eval.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _lr_text(inner_lr: float | str) -> str:
    return inner_lr if isinstance(inner_lr, str) else f"{inner_lr:g}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per number of inner steps, one column per run: ``mean ± ci95``."""
    names = list(results)
    first = results[names[0]]
    scale = 100.0 if first["metric"] == "accuracy" else 1.0
    unit = " (%)" if scale == 100.0 else ""
    steps = list(first["steps"])
    width = max(22, *(len(n) + 2 for n in names))
    lines = [f"{first['metric']}{unit} on {first['num_tasks']} held-out tasks, mean ± 95% CI",
             "steps".ljust(8) + "".join(n.rjust(width) for n in names)]
    for s in steps:
        cells = []
        for n in names:
            cell = results[n]["steps"].get(s)
            text = f"{cell['mean'] * scale:.4g} ± {cell['ci95'] * scale:.2g}" if cell else "-"
            cells.append(text.rjust(width))
        lines.append(s.ljust(8) + "".join(cells))
    lines.append("inner lr".ljust(8) + "".join(_lr_text(results[n]["inner_lr"]).rjust(width)
                                                for n in names))
    return "\n".join(lines)
