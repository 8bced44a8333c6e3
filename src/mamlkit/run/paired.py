"""Paired comparison of two evaluated runs: the per-task difference, mean ± 95% CI.

``mamlkit eval`` evaluates every run on the same held-out tasks in the same order (and, for
RL, with the same sampling noise), so the difference task by task removes the variation
between tasks that the two runs share: a tighter interval than two unpaired ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mamlkit.run.compare import metric_name, read_eval
from mamlkit.run.errors import RunDirectoryError
from mamlkit.run.stats import mean_ci95


def _per_task(run: Path, result: dict[str, Any]) -> dict[str, list[float]]:
    if "per_task" not in result:
        raise RunDirectoryError(f"{run}/eval.json has no per-task values (written before they "
                                f"were kept); run 'mamlkit eval {run}' again.")
    return result["per_task"]


def paired_difference(first: Path, second: Path) -> dict[str, Any]:
    """``first - second`` per step both evaluated: ``{"metric", "num_tasks", "steps": {"k":
    {"mean", "ci95"}}}``, and each run's own gain from its first step (step k minus step 0)."""
    a, b = read_eval(first), read_eval(second)
    if (a["metric"], a["num_tasks"]) != (b["metric"], b["num_tasks"]):
        raise RunDirectoryError(f"{first} and {second} were not evaluated alike ("
                                f"{a['metric']} on {a['num_tasks']} tasks against "
                                f"{b['metric']} on {b['num_tasks']}); evaluate both with "
                                "the same --tasks.")
    per_a, per_b = _per_task(first, a), _per_task(second, b)
    steps = [k for k in per_a if k in per_b]
    differences = {k: mean_ci95(torch.tensor(per_a[k]) - torch.tensor(per_b[k])) for k in steps}
    gains = {name: {k: mean_ci95(torch.tensor(per[k]) - torch.tensor(per["0"]))
                    for k in per if k != "0"}
             for name, per in ((first.name, per_a), (second.name, per_b)) if "0" in per}
    return {"metric": a["metric"], "num_tasks": a["num_tasks"], "runs": [str(first), str(second)],
            "steps": differences, "gain_over_step_0": gains}


def paired_text(result: dict[str, Any]) -> str:
    """A small markdown table of the differences and of each run's gain over step 0."""
    first, second = (Path(run).name for run in result["runs"])
    scale = 100.0 if result["metric"] == "accuracy" else 1.0
    lines = [f"{metric_name(result['metric'])}: {first} minus {second}, task by task on "
             f"{result['num_tasks']} held-out tasks, mean ± 95% CI", "",
             "| steps | difference | " + " | ".join(f"{n}: gain over 0 steps"
                                                    for n in result["gain_over_step_0"]) + " |",
             "|---|---|" + "---|" * len(result["gain_over_step_0"])]
    for k, value in result["steps"].items():
        gains = [g.get(k) for g in result["gain_over_step_0"].values()]
        cells = [_text(value, scale)] + [_text(g, scale) if g else "" for g in gains]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _text(value: dict[str, float], scale: float) -> str:
    return f"{value['mean'] * scale:+.2f} ± {value['ci95'] * scale:.2f}"


__all__ = ["paired_difference", "paired_text"]
