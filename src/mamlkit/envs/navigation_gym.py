"""The single-environment gymnasium version of 2D navigation (``navigation.py`` has the task).

Apart from ``navigation.py`` so that the batched environment and the expert, which supervised and
imitation code import, load without gymnasium.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    import gymnasium as gym
    from gymnasium import spaces
except ModuleNotFoundError as missing:
    if missing.name != "gymnasium":
        raise
    raise ModuleNotFoundError("Navigation2D is a gymnasium environment: pip install "
                              "'mamlkit[rl]'.", name="gymnasium") from None

from mamlkit.envs.navigation import (
    MAX_STEP,
    _check_action_scale,
    _check_reward,
    _reward,
    sample_goal_tasks,
)


class Navigation2D(gym.Env):
    """The single-environment gymnasium version (``gymnasium.make("mamlkit/Navigation2D-v0")``).

    ``reset(options={"task": task})`` or ``reset_task(task)`` sets the goal.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: dict | None = None, reward: str = "distance",
                 done_threshold: float | None = 0.01, action_scale: float = 1.0) -> None:
        self.reward_kind = _check_reward(reward)
        self.done_threshold = done_threshold
        self.action_scale = _check_action_scale(action_scale)
        bound = MAX_STEP / self.action_scale
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-bound, bound, (2,), np.float32)
        self._task = task or {"goal": [0.0, 0.0]}
        self._goal = np.asarray(self._task["goal"], dtype=np.float32)
        self._state = np.zeros(2, dtype=np.float32)

    @staticmethod
    def sample_tasks(num_tasks: int, seed: int | torch.Generator | None = None) -> list[dict]:
        """The same tasks as ``Navigation2DBatch.sample_tasks`` for the same seed."""
        return sample_goal_tasks(num_tasks, seed)

    def reset_task(self, task: dict) -> None:
        self._task = task
        self._goal = np.asarray(task["goal"], dtype=np.float32)

    @property
    def task(self) -> dict:
        return self._task

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if options and "task" in options:
            self.reset_task(options["task"])
        self._state = np.zeros(2, dtype=np.float32)
        return self._state.copy(), {"task": dict(self._task)}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32) * np.float32(self.action_scale)
        action = np.clip(action, -MAX_STEP, MAX_STEP)
        self._state = (self._state + action).astype(np.float32)
        dx, dy = (self._state - self._goal).tolist()
        reward = float(_reward(torch.tensor(dx), torch.tensor(dy), self.reward_kind))
        terminated = (self.done_threshold is not None
                      and abs(dx) < self.done_threshold and abs(dy) < self.done_threshold)
        return self._state.copy(), reward, bool(terminated), False, {"task": dict(self._task)}
