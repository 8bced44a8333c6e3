"""2D navigation (Finn et al. 2017, section 5.3): a point moves to a goal it cannot see.

The agent starts at the origin; each task has a goal drawn uniformly from [-0.5, 0.5]^2; the
observation is the agent's position, the action a displacement clipped to [-0.1, 0.1]^2, the
horizon 100 steps. ``action_scale`` multiplies the policy's action before the clip: 0.1 is the
paper's code (rllab's ``normalize`` maps the policy's [-1, 1] onto the action box, so a policy std
of 1 is a step of 0.1), 1 is pytorch-maml-rl (a std of 1 saturates the clip). The reward is
minus the distance to the goal (``reward="distance"``, as in the reference code rllab
``PointEnvRandGoal`` and pytorch-maml-rl) or minus the squared distance (``reward="squared"``, as
the paper's text says). An episode ends early once both coordinates are within
0.01 of the goal (reference code; ``done_threshold=None`` never ends early).

``Navigation2DBatch`` steps all tasks x trajectories as one torch tensor: 3.5M-10M steps/s on its
own for 20 x 20 copies on the 2-core machine, so the policy's forward pass is the cost of sampling.
This module needs torch alone; the single gymnasium environment ``Navigation2D`` lives in
``navigation_gym.py``, so supervised runs import without the simulators.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mamlkit.envs.base import Generators
from mamlkit.functional.seeding import generator_from
from mamlkit.registry import EnvSpec, register

REWARDS = ("distance", "squared")
GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_STEP = 0.1


def sample_goal_tasks(num_tasks: int, generator: torch.Generator | int | None) -> list[dict]:
    """``num_tasks`` tasks ``{"goal": [x, y]}`` with goals uniform in [-0.5, 0.5]^2."""
    goals = torch.empty(num_tasks, 2).uniform_(GOAL_LOW, GOAL_HIGH,
                                               generator=generator_from(generator))
    return [{"goal": [float(x), float(y)]} for x, y in goals.tolist()]


def expert_action(obs: Tensor, goal: Tensor) -> Tensor:
    """The best action: the step toward the goal, clipped to [-0.1, 0.1]^2 (for demonstrations).

    Broadcasts: ``obs [..., 2]`` and ``goal [..., 2]`` (e.g. goals ``[T, 1, 2]`` against
    observations ``[T, N, 2]``).
    """
    return (goal - obs).clamp(-MAX_STEP, MAX_STEP)


def _check_reward(reward: str) -> str:
    if reward not in REWARDS:
        raise ValueError(f"Navigation2D reward must be one of {REWARDS}, got {reward!r}.")
    return reward


def _check_action_scale(action_scale: float) -> float:
    if not (isinstance(action_scale, int | float) and 0 < action_scale < float("inf")):
        raise ValueError(f"Navigation2D action_scale must be a positive number, got "
                         f"{action_scale!r}.")
    return float(action_scale)


def _reward(dx: Tensor, dy: Tensor, kind: str) -> Tensor:
    squared = dx * dx + dy * dy
    return -squared if kind == "squared" else -torch.sqrt(squared)


class Navigation2DBatch:
    """All tasks x trajectories of 2D navigation stepped as one ``[T, N, 2]`` tensor."""

    observation_dim = 2
    action_dim = 2

    def __init__(self, reward: str = "distance", horizon: int = 100,
                 done_threshold: float | None = 0.01, action_scale: float = 1.0) -> None:
        self.reward = _check_reward(reward)
        self.action_scale = _check_action_scale(action_scale)
        self.horizon = int(horizon)
        self.done_threshold = done_threshold
        self._goals = torch.zeros(0, 1, 2)
        self._state = torch.zeros(0, 0, 2)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator | int | None) -> list[dict]:
        return sample_goal_tasks(num_tasks, generator)

    def task_tensor(self, tasks: list[dict]) -> Tensor:
        """Goals ``[tasks, 2]``."""
        return torch.tensor([task["goal"] for task in tasks], dtype=torch.float32).reshape(-1, 2)

    def reset(self, tasks: list[dict], num_trajectories: int,
              generator: Generators | None = None) -> Tensor:
        """Every trajectory starts at the origin (no randomness; ``generator`` is unused)."""
        self._goals = self.task_tensor(tasks).unsqueeze(1)
        self._state = torch.zeros(len(tasks), num_trajectories, 2)
        return self._state.clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        step = actions.float() * self.action_scale if self.action_scale != 1.0 else actions.float()
        self._state = self._state + step.clamp(-MAX_STEP, MAX_STEP)
        delta = self._state - self._goals
        reward = _reward(delta[..., 0], delta[..., 1], self.reward)
        if self.done_threshold is None:
            done = torch.zeros(reward.shape, dtype=torch.bool)
        else:
            done = (delta.abs() < self.done_threshold).all(-1)
        return self._state.clone(), reward, done

    def expert_actions(self) -> Tensor:
        """The expert's actions ``[T, N, 2]`` in the current states, in the policy's units."""
        return expert_action(self._state, self._goals) / self.action_scale


def _options(config: Any) -> dict[str, Any]:
    """The config's ``action_scale`` where it is not the default (1: the class's own)."""
    return {} if config.action_scale == 1.0 else {"action_scale": config.action_scale}


register(EnvSpec(name="nav2d", make=Navigation2DBatch, options=_options, figure="trajectories",
                 keys=("action_scale", "imitation_tasks", "imitation_weight", "demonstrations"),
                 doc="2D navigation to a goal the agent cannot see (Finn et al. 2017)"))
