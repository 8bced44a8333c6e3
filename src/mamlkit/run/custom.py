"""Your own task distribution and model through the whole run machinery, from Python.

Any object with ``sample(num_tasks, generator) -> TaskBatch`` (and ``loss``/``metric``
attributes, e.g. ``"mse"``, ``"accuracy"`` or a ``functional.TaskLoss``) and any ``nn.Module``
train with the one training loop: run directory, checkpoints and exact resume, metrics,
TensorBoard, time limit, torchrun, then ``load`` and ``evaluate`` on the same held-out tasks as
every run. The config is the ``custom`` preset with your overrides; its task is ``custom``,
whose tasks and model come from here (the command line cannot rebuild them, and says so).

    from mamlkit.run import custom
    config = custom.config(inner_lr=0.01, meta_batch_size=16, iterations=2000)
    custom.train(config, "runs/mine", tasks=MyTasks("train"), model=my_net)
    learner = custom.load("runs/mine", tasks=MyTasks("test"), model=my_net)
    print(custom.evaluate(learner, tasks=MyTasks("test")))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mamlkit.run import evaluate as evaluation
from mamlkit.run import load as loading
from mamlkit.run import loop
from mamlkit.run.config import Config, resolve
from mamlkit.run.custom_task import NAME, Components


def config(**overrides: Any) -> Config:
    """The ``custom`` preset with ``overrides`` (checked like any config)."""
    return resolve(NAME, overrides)


def train(config: Config | None, run_dir: str | Path, *, tasks: Any, model: nn.Module,
          val_tasks: Any = None, test_tasks: Any = None, resume: bool = False,
          progress: bool = True):
    """Meta-train ``model`` on ``tasks`` with the one training loop (``config=None`` with
    ``resume=True`` continues the run as it was)."""
    return loop.train(config, run_dir, resume=resume, progress=progress,
                      given=Components(tasks, model, val_tasks, test_tasks))


def load(run_dir: str | Path, *, tasks: Any, model: nn.Module, which: str = "best"):
    """The trained learner of a custom run, around ``model`` (built as for training)."""
    return loading.load(run_dir, which, given=Components(tasks, model))


def evaluate(learner: loading.Loaded, *, tasks: Any, num_tasks: int | None = None,
             steps: list[int] | None = None):
    """The evaluation protocol of every run (same held-out seed, mean ± 95% CI) on ``tasks``:
    an ``Evaluation``, a dict that prints as the table of ``mamlkit eval``."""
    return evaluation.evaluate(learner, num_tasks=num_tasks, steps=steps,
                               given=Components(tasks, learner.model, test_tasks=tasks))


__all__ = ["Components", "config", "evaluate", "load", "train"]
