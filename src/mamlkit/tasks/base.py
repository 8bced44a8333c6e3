"""What every supervised (H = 1) task distribution offers the training and evaluation loops."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from mamlkit.tasks.batch import TaskBatch


@runtime_checkable
class TaskDistribution(Protocol):
    """p(T): draws stacks of tasks from a ``torch.Generator`` so that runs reproduce bit for bit.

    ``loss`` names the task loss (``"mse"`` or ``"cross_entropy"``) and ``metric`` what the
    evaluation reports (``"mse"`` or ``"accuracy"``).
    """

    loss: str
    metric: str

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch: ...


def generator_from(seed_or_generator: int | torch.Generator | None) -> torch.Generator:
    """A CPU generator from a seed (or the generator itself), so samplers accept either."""
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    generator = torch.Generator()
    generator.manual_seed(0 if seed_or_generator is None else int(seed_or_generator))
    return generator
