"""Trajectories of many tasks stacked as ``[tasks, trajectories, horizon, ...]`` tensors.

One stack for a whole meta-batch lets the losses ``vmap`` over tasks (layer 1 style) instead of
looping; ``mask`` marks the steps of episodes that ended early (2D navigation stops at the goal),
so sums over time are sums over ``rewards * mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Episodes:
    """``observations [T, N, H, obs]``, ``actions [T, N, H, act]`` (the sampled, unclipped
    actions, whose log-probabilities the losses need), ``rewards`` and ``mask`` ``[T, N, H]``
    (1.0 while the episode is alive, 0.0 after it ended) and the ``tasks`` they came from."""

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    tasks: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        t, n, h = self.rewards.shape
        for name in ("observations", "actions"):
            if getattr(self, name).shape[:3] != (t, n, h):
                raise ValueError(f"Episodes.{name} must start with [tasks, trajectories, horizon]"
                                 f" = {(t, n, h)}, got {tuple(getattr(self, name).shape)}.")
        if self.mask.shape != self.rewards.shape:
            raise ValueError("Episodes.mask must have the shape of rewards.")
        if self.tasks and len(self.tasks) != t:
            raise ValueError(f"Episodes hold {t} tasks but {len(self.tasks)} task dicts.")

    @property
    def num_tasks(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_trajectories(self) -> int:
        return self.rewards.shape[1]

    @property
    def horizon(self) -> int:
        return self.rewards.shape[2]

    @property
    def lengths(self) -> Tensor:
        """Steps each episode lived, ``[T, N]``."""
        return self.mask.sum(-1)

    @property
    def returns(self) -> Tensor:
        """Undiscounted return of each trajectory, ``[T, N]``."""
        return (self.rewards * self.mask).sum(-1)

    def mean_return(self) -> float:
        """Average undiscounted return over all tasks and trajectories (what the paper plots)."""
        return float(self.returns.mean())

    def task_returns(self) -> Tensor:
        """Average return per task, ``[T]``."""
        return self.returns.mean(-1)

    def __getitem__(self, index: int | slice) -> Episodes:
        """The episodes of some tasks (an int keeps the task dimension, of size 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        tasks = self.tasks[index] if self.tasks else []
        return Episodes(self.observations[index], self.actions[index], self.rewards[index],
                        self.mask[index], list(tasks))

    def __len__(self) -> int:
        return self.num_tasks

    def to(self, device: torch.device | str) -> Episodes:
        return Episodes(self.observations.to(device), self.actions.to(device),
                        self.rewards.to(device), self.mask.to(device), list(self.tasks))

    @staticmethod
    def cat(parts: list[Episodes]) -> Episodes:
        """Stack the tasks of several ``Episodes`` (same trajectories and horizon)."""
        return Episodes(torch.cat([p.observations for p in parts]),
                        torch.cat([p.actions for p in parts]),
                        torch.cat([p.rewards for p in parts]),
                        torch.cat([p.mask for p in parts]),
                        [t for p in parts for t in p.tasks])
