"""The ``custom`` task: a task distribution and model handed in from Python (``run.custom``),
registered like every task so that the builders, loaders and evaluation take them from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from mamlkit.registry import ConfigError, TaskSpec, register

NAME = "custom"  # the task's name, and that of the preset its runs start from


@dataclass
class Components:
    """What a ``custom`` run cannot build from its config: task distributions and the model,
    handed to the builders (``run.build``) by ``run.custom``."""

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


def check_tasks(tasks: Any) -> None:
    """The attributes a run reads from a task distribution, each missing one in one sentence
    (not an AttributeError from deep in the loop)."""
    for name, names in (("loss", "'mse', 'cross_entropy'"),
                        ("metric", "'mse', 'accuracy', 'cross_entropy'")):
        if getattr(tasks, name, None) is None:
            raise TypeError(f"The task distribution {type(tasks).__name__} has no {name} "
                            f"attribute; give it {name} = {names}, a (prediction, target) "
                            "function or a mamlkit.functional.TaskLoss.")


def _from_python(*args: Any) -> Any:
    """Without components handed in, a ``custom`` run cannot be built (the command line)."""
    raise ConfigError("This run's tasks and model come from Python (task: custom); train, "
                      "load and evaluate it with mamlkit.run.custom.train/load/evaluate.")


register(TaskSpec(name=NAME, build=_from_python, network=_from_python, in_python=True,
                  doc="your own task distribution and model, from Python (mamlkit.run.custom)"))


__all__ = ["NAME", "Components", "check_tasks"]
