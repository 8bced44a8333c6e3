"""Imitation tasks of 2D navigation (H = 1): a goal with (state, expert action) pairs.

Supervised tasks for a policy, to mix with RL tasks in one meta-batch: the inner step regresses
the policy's mean on the support pairs (``ImitationLoss``), the query loss is the same
regression on fresh pairs, with the same learner and the same inner step as the RL tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mamlkit.envs.navigation import expert_action, sample_goal_tasks
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.rl.losses import ImitationLoss

STATE_LOW, STATE_HIGH = -0.6, 0.6  # where demonstration states are drawn (goals lie in +-0.5)


@dataclass
class ImitationTasks:
    """p(T) of navigation goals with ``demonstrations`` expert pairs per support/query set.

    Actions are in units of the action limit, ``clip((goal - s) / 0.1, -1, 1)``: the environment
    clips the policy's actions to +-0.1, so this expert steps toward the goal at full speed, and
    targets of order one suit the inner learning rate of the RL tasks. (Regressing
    ``mean / 0.1`` on them instead is 100x stiffer: alpha = 0.1 diverged.)
    """

    demonstrations: int = 20
    action_scale: float = 0.1
    loss: ImitationLoss = field(default_factory=ImitationLoss)

    @property
    def metric(self) -> ImitationLoss:
        return self.loss

    def sample(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        tasks = sample_goal_tasks(num_tasks, generator)
        goals = torch.tensor([t["goal"] for t in tasks], dtype=torch.float32)
        k = self.demonstrations
        states = torch.empty(num_tasks, 2 * k, 2).uniform_(STATE_LOW, STATE_HIGH,
                                                           generator=generator)
        actions = expert_action(states, goals.unsqueeze(1)) / self.action_scale
        return TaskBatch((states[:, :k], actions[:, :k]), (states[:, k:], actions[:, k:]),
                         self.loss)


__all__ = ["ImitationTasks"]
