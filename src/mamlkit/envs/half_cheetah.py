"""Half-cheetah locomotion tasks of Finn et al. 2017 (section 5.3) on gymnasium's HalfCheetah-v5.

- ``HalfCheetahVel``: run at a goal velocity ``v_goal ~ U[0, 2]``;
  reward ``-|v - v_goal| - 0.05 |a|^2``.
- ``HalfCheetahDir``: run forward or backward, ``direction`` = +1 or -1 with probability 1/2;
  reward ``direction * v - 0.05 |a|^2``.

``v`` is the forward velocity gymnasium reports as ``info["x_velocity"]`` (x displacement of the
root over one step of 5 frames / dt). The control cost coefficient 0.05 (= 0.5 * 1e-1) is the
reference code's for both tasks (rllab ``half_cheetah_env_rand{,_direc}.py`` and pytorch-maml-rl);
gymnasium's own 0.1 is not used. Actions are clipped to the action space [-1, 1]^6 before the
simulation and the control cost, as rllab's ``normalize`` wrapper in the reference code did
(``clip_actions=False`` charges the cost on the raw action; MuJoCo clamps the control anyway).
Observations are gymnasium's 17 numbers (qpos without the root x, then qvel); the reference code
appended the torso's centre of mass (20 numbers). The model is the reference code's (rllab's
``half_cheetah.xml``, 0.01 s per simulator step, gymnasium's file is the same physics); gymnasium
steps it 5 times per action, the reference code once: the paper presets set ``frame_skip: 1``,
so that their H = 200 covers the paper's 2 s and not 10 s.

``HalfCheetahBatch`` steps ``tasks x trajectories`` ``MjData`` of one ``MjModel`` in a Python loop
(``mj_step`` with ``nstep=5``), no rendering: the same physics, bit for bit, as the gymnasium
environment. Measured speeds are in ``mamlkit.envs``'s docstring.
"""

from __future__ import annotations

import os
from typing import Any

import mujoco
import numpy as np
from gymnasium.envs.mujoco import half_cheetah_v5

from mamlkit.envs.mujoco_tasks import (
    FRAME_SKIP,
    KINDS,
    RESET_NOISE,
    LocomotionBatch,
    LocomotionTaskEnv,
    load_xml_model,
)

CTRL_COST = 0.05
MAX_VELOCITY = 2.0
XML = os.path.join(os.path.dirname(half_cheetah_v5.__file__), "assets", "half_cheetah.xml")

__all__ = ["CTRL_COST", "FRAME_SKIP", "KINDS", "MAX_VELOCITY", "RESET_NOISE", "XML",
           "HalfCheetahBatch", "HalfCheetahDir", "HalfCheetahVel", "cheetah_reward", "load_model"]


def load_model(xml_file: str = XML) -> mujoco.MjModel:
    """The half-cheetah ``MjModel`` without the deprecation noise."""
    return load_xml_model(xml_file)


def cheetah_reward(kind: str, task_value: Any, x_velocity: Any, action: Any) -> Any:
    """The task reward from the forward velocity and the (clipped) action; numpy or torch."""
    ctrl = CTRL_COST * (action * action).sum(-1)
    if kind == "velocity":
        return -abs(x_velocity - task_value) - ctrl
    return task_value * x_velocity - ctrl


class HalfCheetahBatch(LocomotionBatch):
    """``tasks x trajectories`` half-cheetahs (see ``LocomotionBatch``); they never end."""

    robot = "Half-cheetah"
    max_velocity = MAX_VELOCITY
    xml = XML

    def _observation_dim(self) -> int:
        return self.model.nq - 1 + self.model.nv

    def _read(self, i: int, d: mujoco.MjData) -> None:
        """qpos without the root x, then qvel; the root x position."""
        nq = self.model.nq
        qpos = d.qpos
        self._x[i] = qpos[0]
        self._obs[i, : nq - 1] = qpos[1:]
        self._obs[i, nq - 1:] = d.qvel

    def _reward(self, x_velocity: np.ndarray, actions: np.ndarray,
                was_ended: np.ndarray) -> np.ndarray:
        return cheetah_reward(self.kind, self._values, x_velocity, actions)


class _CheetahTaskEnv(LocomotionTaskEnv, half_cheetah_v5.HalfCheetahEnv):
    """gymnasium HalfCheetah-v5 with a task: ``reset_task(task)`` or ``reset(options={"task"})``."""

    robot = "Half-cheetah"
    max_velocity = MAX_VELOCITY

    def task_reward(self, task_value: float, x_velocity: float, action: np.ndarray) -> float:
        return cheetah_reward(self.kind, task_value, x_velocity, action)


class HalfCheetahVel(_CheetahTaskEnv):
    """Run at ``task["velocity"]`` (``gymnasium.make("mamlkit/HalfCheetahVel-v0")``)."""

    kind = "velocity"


class HalfCheetahDir(_CheetahTaskEnv):
    """Run in ``task["direction"]`` = +1 or -1 (``gymnasium.make("mamlkit/HalfCheetahDir-v0")``)."""

    kind = "direction"
