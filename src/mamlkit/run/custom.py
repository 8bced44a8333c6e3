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

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mamlkit.run.config import Config, resolve


@dataclass
class Components:
    """What a ``custom`` run cannot build from its config: task distributions and the model."""

    tasks: Any
    model: nn.Module
    val_tasks: Any = None
    test_tasks: Any = None

    def __post_init__(self) -> None:
        for tasks in (self.tasks, self.val_tasks, self.test_tasks):
            if tasks is not None:
                check_tasks(tasks)

    def split(self, split: str) -> Any:
        """The tasks of ``split``: train; val (default: train's); test (default: val's)."""
        if split == "train":
            return self.tasks
        if split == "val":
            return self.val_tasks or self.tasks
        return self.test_tasks or self.val_tasks or self.tasks


_ACTIVE: list[Components] = []


def check_tasks(tasks: Any) -> None:
    """The attributes a run reads from a task distribution, each missing one in one sentence
    (not an AttributeError from deep in the loop)."""
    for name, names in (("loss", "'mse', 'cross_entropy'"),
                        ("metric", "'mse', 'accuracy', 'cross_entropy'")):
        if getattr(tasks, name, None) is None:
            raise TypeError(f"The task distribution {type(tasks).__name__} has no {name} "
                            f"attribute; give it {name} = {names}, a (prediction, target) "
                            "function or a mamlkit.functional.TaskLoss.")


def active() -> Components | None:
    """The components of the custom run being built (the builders ask)."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def using(components: Components) -> Iterator[Components]:
    """Builders of ``task: custom`` runs take their tasks and model from ``components``."""
    _ACTIVE.append(components)
    try:
        yield components
    finally:
        _ACTIVE.pop()


def config(**overrides: Any) -> Config:
    """The ``custom`` preset with ``overrides`` (checked like any config)."""
    return resolve("custom", overrides)


def train(config: Config | None, run_dir: str | Path, *, tasks: Any, model: nn.Module,
          val_tasks: Any = None, test_tasks: Any = None, resume: bool = False,
          progress: bool = True):
    """Meta-train ``model`` on ``tasks`` with the one training loop (``config=None`` with
    ``resume=True`` continues the run as it was)."""
    from mamlkit.run.loop import train as train_run

    with using(Components(tasks, model, val_tasks, test_tasks)):
        return train_run(config, run_dir, resume=resume, progress=progress)


def load(run_dir: str | Path, *, tasks: Any, model: nn.Module, which: str = "best"):
    """The trained learner of a custom run, around ``model`` (built as for training)."""
    from mamlkit.run.load import load as load_run

    with using(Components(tasks, model)):
        return load_run(run_dir, which)


def evaluate(learner, *, tasks: Any, num_tasks: int | None = None,
             steps: list[int] | None = None):
    """The evaluation protocol of every run (same held-out seed, mean ± 95% CI) on ``tasks``:
    an ``Evaluation``, a dict that prints as the table of ``mamlkit eval``."""
    from mamlkit.run.evaluate import evaluate as evaluate_run

    with using(Components(tasks, learner.model, test_tasks=tasks)):
        return evaluate_run(learner, num_tasks=num_tasks, steps=steps)


__all__ = ["Components", "active", "config", "evaluate", "load", "train", "using"]
