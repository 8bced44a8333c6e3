"""The evaluation protocol: many held-out tasks, the task metric before and after k inner steps.

Every run is evaluated on the same tasks (drawn from a fixed seed in fixed-size chunks), and each
figure is a mean with its 95% confidence interval (1.96 standard errors over tasks). Supervised
tasks report the query metric (MSE, accuracy) after k steps on the support set; RL tasks the
average return of trajectories sampled after k policy-gradient steps (fresh trajectories after
every step, the same sampling noise for every run), with the run's untrained initial policy
("random") beside it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mamlkit.run.adapted import inner_lr_at_eval
from mamlkit.run.atomic import write_atomic
from mamlkit.run.build import EVAL_SEED, build_tasks, device_of
from mamlkit.run.compare import baseline_rows, mean_ci_text, metric_name
from mamlkit.run.custom_task import Components
from mamlkit.run.held_out import HeldOut, ValuesOf, held_out_curve
from mamlkit.run.learner import Pretrains
from mamlkit.run.load import Loaded
from mamlkit.run.stats import mean_ci95, task_values
from mamlkit.tasks import RLTasks

EVAL_CHUNK = 100  # supervised tasks per sampling call; fixed so every run sees the same tasks
RL_EVAL_CHUNK = 20  # RL tasks sampled together; fixed so every run draws the same noise


def _curve(loaded: Loaded, tasks: Any, held_out: HeldOut, bar: tqdm,
           values_of: ValuesOf | None = None) -> torch.Tensor:
    """The evaluation protocol's chunks: 100 supervised tasks per draw, adapted a meta-batch
    at a time (memory as in training); RL tasks 20 at a time, with ``eval_trajectories``."""
    learner, config = loaded.learner, loaded.config
    if isinstance(tasks, RLTasks):  # sampled on the CPU, where the policy stays
        if config.eval_trajectories is not None:  # the paper samples more than training
            tasks = dataclasses.replace(tasks, trajectories=config.eval_trajectories)
        held_out = dataclasses.replace(held_out, eval_chunk=RL_EVAL_CHUNK)
        return held_out_curve(learner, tasks, held_out, progress=bar.update).values
    device = device_of(config)
    learner.to(device)
    learner.rebatch()  # with "auto", the fastest strategy depends on where the model now is
    held_out = dataclasses.replace(held_out, sample_chunk=EVAL_CHUNK,
                                   eval_chunk=config.meta_batch_size)
    return held_out_curve(learner, tasks, held_out, device, values_of, bar.update).values


class Evaluation(dict):
    """An evaluation's result: a dict (``result["steps"]["1"]["mean"]``, ``per_task``, JSON as
    it is) that prints as its table, not as the thousands of per-task numbers it keeps."""

    def __repr__(self) -> str:
        return format_table({"mean ± 95% CI": self})

    __str__ = __repr__


def evaluate(learner: Loaded, num_tasks: int | None = None, steps: list[int] | None = None,
             inner_lr: float | list[float] | None = None, progress: bool = False,
             desc: str | None = None, given: Components | None = None) -> Evaluation:
    """The task metric of ``num_tasks`` held-out tasks after each number of inner steps.

    Returns ``{"metric", "num_tasks", "inner_lr", "checkpoint", "iteration", "steps": {"k":
    {"mean", "ci95"}}, "per_task": {"k": [value of each task]}}`` (``per_task`` for paired
    comparisons, ``mamlkit compare --paired``); ``checkpoint`` and ``iteration`` say which
    weights were evaluated (a loaded learner's, else None). Learners with learned inner rates
    (Meta-SGD, MAML++ with LSLR) adapt with those: the scalar ``inner_lr``/``eval_inner_lr`` is
    ignored and ``"inner_lr"`` reads ``"learned"``. The dict is an ``Evaluation``, which prints
    as the table of ``mamlkit eval``. ``progress`` shows a bar of tasks on stderr. The
    pretrained baseline (``algorithm: pretrained``) reports its fine-tuning as ``"steps"`` and
    adds ``"baselines"``: the linear head and nearest mean, each an evaluation of this form.
    ``given`` holds the tasks of a ``custom`` run (``run.custom.evaluate``).
    """
    config = learner.config
    num_tasks = num_tasks or config.eval_tasks
    steps = steps or config.eval_steps
    inner_lr = inner_lr if inner_lr is not None else inner_lr_at_eval(config, max(steps))
    learned = learner.learner.learned_rates
    tasks = build_tasks(config, "test", given)
    held_out = HeldOut(EVAL_SEED, num_tasks, steps, None if learned else inner_lr)
    with tqdm(total=num_tasks, desc=desc, unit="task", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        curve = _curve(learner, tasks, held_out, bar)
    result = Evaluation({
        "metric": tasks.metric,
        "num_tasks": num_tasks,
        "inner_lr": "learned" if learned else inner_lr,
        "checkpoint": learner.checkpoint,
        "iteration": learner.iteration,
        "steps": {str(s): mean_ci95(curve[i]) for i, s in enumerate(steps)},
        # every run sees the same tasks in the same order: two runs compare task by task
        "per_task": {str(s): task_values(curve[i]) for i, s in enumerate(steps)},
    })
    if isinstance(learner.learner, Pretrains):  # the pretrained baseline: fine-tuning above
        result["baselines"] = _frozen_baselines(learner, tasks, held_out, result, progress, desc)
    return result


def _frozen_baselines(loaded: Loaded, tasks: Any, held_out: HeldOut, result: dict[str, Any],
                      progress: bool, desc: str | None) -> dict[str, dict[str, Any]]:
    """The linear head and nearest mean on the same held-out tasks, as evaluations of their
    own; they use the support set once, so each step k >= 1 reports the same value."""
    learner = loaded.learner
    assert isinstance(learner, Pretrains)
    num_tasks, steps = result["num_tasks"], [int(s) for s in result["steps"]]
    names = learner.frozen_names

    def accuracy(part) -> torch.Tensor:
        values = learner.frozen_accuracy(part)
        return torch.stack([values[name] for name in names])

    with tqdm(total=num_tasks, desc=desc and f"{desc} frozen", unit="task", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        curve = _curve(loaded, tasks, held_out, bar, accuracy)
    return {name: {**result, "inner_lr": "frozen",
                   "steps": {str(s): mean_ci95(curve[i]) for s in steps if s > 0},
                   "per_task": {str(s): task_values(curve[i]) for s in steps if s > 0}}
            for i, name in enumerate(names)}


def _holds_full(path: Path, full_tasks: int) -> bool:
    try:
        return json.loads(path.read_text()).get("num_tasks") == full_tasks
    except (OSError, ValueError, AttributeError):
        return False


def eval_path(run_dir: Path, num_tasks: int, full_tasks: int | None = None) -> Path:
    """``eval.json``, the file ``compare`` reads, holds the run's evaluation: its first one, of
    any number of tasks, until one on the config's ``eval_tasks`` (``full_tasks``) replaces
    it; once it holds that one, an evaluation on another number of tasks goes to
    ``eval-N.json``, so a quick check never replaces the full evaluation."""
    full = Path(run_dir) / "eval.json"
    if full_tasks is None or num_tasks == full_tasks or not _holds_full(full, full_tasks):
        return full
    return full.with_name(f"eval-{num_tasks}.json")


def write(run_dir: Path, result: dict[str, Any], full_tasks: int | None = None) -> Path:
    """Write ``result`` where ``eval_path`` says, through a temporary file and a rename (a
    kill never leaves half a file); raises ``OSError`` where the run directory is read-only."""
    path = eval_path(Path(run_dir), result["num_tasks"], full_tasks)
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    return path


def _lr_text(inner_lr: float | list[float] | str) -> str:
    """``0.4``, ``learned``, or a schedule as its steps up to the repeated last: ``0.1,0.05``."""
    if isinstance(inner_lr, str):
        return inner_lr
    if isinstance(inner_lr, list):
        while len(inner_lr) > 1 and inner_lr[-1] == inner_lr[-2]:
            inner_lr = inner_lr[:-1]
        return ",".join(f"{lr:g}" for lr in inner_lr)
    return f"{inner_lr:g}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per number of inner steps, one column per run: ``mean ± ci95``."""
    results = {row: r for name, result in results.items()
               for row, r in baseline_rows(name, result).items()}
    names = list(results)
    first = results[names[0]]
    scale = 100.0 if first["metric"] == "accuracy" else 1.0
    steps = list(first["steps"])
    width = max(22, *(len(n) + 2 for n in names))
    lines = [f"{metric_name(first['metric'])} on {first['num_tasks']} held-out tasks, "
             "mean ± 95% CI",
             "steps".ljust(8) + "".join(n.rjust(width) for n in names)]
    for s in steps:
        cells = []
        for n in names:
            cell = results[n]["steps"].get(s)
            text = mean_ci_text(cell["mean"] * scale, cell["ci95"] * scale) if cell else "-"
            cells.append(text.rjust(width))
        lines.append(s.ljust(8) + "".join(cells))
    lines.append("inner lr".ljust(8) + "".join(_lr_text(results[n]["inner_lr"]).rjust(width)
                                                for n in names))
    lines.append("iter.".ljust(8) + "".join(str(results[n].get("iteration", "?")).rjust(width)
                                             for n in names))
    return "\n".join(lines)


__all__ = ["EVAL_CHUNK", "RL_EVAL_CHUNK", "Evaluation", "eval_path", "evaluate", "format_table",
           "mean_ci95", "write"]
