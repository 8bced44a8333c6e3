"""What a batched multi-task environment offers the samplers in ``mamlkit.rl``.

A ``BatchEnv`` steps ``[tasks, trajectories]`` copies of an environment at once, each task with
its own parameters (a goal, a target velocity), so that sampling a whole meta-batch costs one
policy call per time step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator]


@runtime_checkable
class BatchEnv(Protocol):
    """Tensors in and out on the CPU: observations ``[tasks, trajs, observation_dim]`` (float32),
    actions ``[tasks, trajs, action_dim]``, rewards ``[tasks, trajs]``, done ``[tasks, trajs]``
    (bool; the sampler masks everything after an episode's first ``done``)."""

    observation_dim: int
    action_dim: int
    horizon: int

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> list[dict]: ...

    def task_tensor(self, tasks: list[dict]) -> Tensor: ...

    def reset(self, tasks: list[dict], num_trajectories: int,
              generator: Generators | None = None) -> Tensor: ...

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


def per_task(generator: Generators | None, num_tasks: int) -> list[torch.Generator | None]:
    """One generator per task: a list is used as is, a single generator is shared by all tasks
    (drawn from in task order), ``None`` uses torch's global generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * num_tasks
    generators: list[torch.Generator | None] = list(generator)
    if len(generators) != num_tasks:
        raise ValueError(f"reset got {len(generators)} generators for {num_tasks} tasks; pass one "
                         "generator, or one per task.")
    return generators
