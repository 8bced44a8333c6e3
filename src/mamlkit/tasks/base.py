"""What every task distribution offers the training and evaluation loops."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from mamlkit.functional.seeding import generator_from
from mamlkit.functional.task_batch import TaskBatch


@runtime_checkable
class TaskDistribution(Protocol):
    """p(T): draws stacks of tasks from a ``torch.Generator`` so that runs reproduce bit for bit.

    ``loss`` names the task loss (``"mse"`` or ``"cross_entropy"``) and ``metric`` what the
    evaluation reports (``"mse"`` or ``"accuracy"``).
    """

    loss: str
    metric: str

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch: ...


__all__ = ["TaskDistribution", "generator_from"]
