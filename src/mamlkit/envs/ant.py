"""Ant locomotion tasks of Finn et al. 2017 (section 5.3) on gymnasium's Ant-v5.

- ``AntVel``: run at a goal velocity ``v_goal ~ U[0, 3]``;
  reward ``-|v - v_goal| + 1 + 0.05 - 0.005 |a|^2 - 0.0005 |clip(cfrc_ext, -1, 1)|^2``.
- ``AntDir``: run forward or backward, ``direction`` = +1 or -1 with probability 1/2;
  reward ``direction * v + 0.05 - 0.005 |a|^2 - 0.0005 |clip(cfrc_ext, -1, 1)|^2``.

The coefficients are those of the reference code (rllab ``ant_env_rand.py`` and
``ant_env_rand_direc.py`` of the MAML code): control cost 0.5 * 1e-2 on the action in [-1, 1]^8,
contact cost 0.5 * 1e-3 on the external contact forces clipped to [-1, 1], a survival bonus of
0.05 on every step, and for the velocity task an extra +1 on every step (the reference code's
"make it happy, not suicidal": with a reward of ``-|v - v_goal|`` alone, falling over early would
pay). gymnasium's own weights (0.5, 5e-4, healthy reward 1) are not used.

``v`` is gymnasium's ``x_velocity``: the torso's x displacement (``data.xpos``) over one step of
5 frames / dt (rllab read the torso's centre-of-mass velocity instead). Observations are
gymnasium's 105 numbers (qpos without the root x, y; qvel; the clipped ``cfrc_ext`` of the 13
bodies), the reference code used 125 (with x, y, the torso's rotation matrix and position).
Actions are clipped to [-1, 1]^8 before the simulation and the control cost. The reference
code's model (rllab's ``ant.xml``) steps 0.02 s once per action (RK4) where gymnasium's steps
0.01 s five times; its torques are the same (control range 150, gear 1, against 1 and 150) and
its contacts softer (``solimp .8 .8 .01``). The paper presets set ``frame_skip: 2``: 0.02 s per
action, so that H = 200 covers the paper's 4 s.

Termination as in Ant-v5: an episode ends once the state is not finite or the torso's height
leaves [0.2, 1.0]. The step that ends it still earns its reward (rllab did the same); afterwards
the copy is absorbing: it is no longer simulated, keeps its last observation (non-finite numbers
zeroed), earns 0 and reports ``done``, so that the fixed-horizon sampler masks its remaining steps
and no NaN reaches the masked slots of the losses.

``AntBatch`` steps ``tasks x trajectories`` ``MjData`` of one ``MjModel`` in a Python loop
(``mj_step`` with ``nstep=5``, then ``mj_rnePostConstraint`` for the contact forces, as
gymnasium does), no rendering: the same physics, bit for bit, as the gymnasium environment.
"""

from __future__ import annotations

import os
from typing import Any

import mujoco
import numpy as np
from gymnasium.envs.mujoco import ant_v5

from mamlkit.envs.mujoco_tasks import (
    FRAME_SKIP,
    KINDS,
    RESET_NOISE,
    LocomotionBatch,
    LocomotionTaskEnv,
)

CTRL_COST = 0.005
CONTACT_COST = 0.0005
SURVIVE_REWARD = 0.05
VELOCITY_BONUS = 1.0  # the velocity task's extra reward per step (reference code)
HEALTHY_Z = (0.2, 1.0)
MAX_VELOCITY = 3.0
XML = os.path.join(os.path.dirname(ant_v5.__file__), "assets", "ant.xml")

__all__ = ["CONTACT_COST", "CTRL_COST", "FRAME_SKIP", "HEALTHY_Z", "KINDS", "MAX_VELOCITY",
           "RESET_NOISE", "SURVIVE_REWARD", "VELOCITY_BONUS", "XML", "AntBatch", "AntDir", "AntVel",
           "ant_reward", "is_healthy"]


def ant_reward(kind: str, task_value: Any, x_velocity: Any, action: Any,
               contact_forces: Any) -> Any:
    """The task reward from the forward velocity, the (clipped) action ``[..., 8]`` and the
    clipped external contact forces ``[..., bodies * 6]``; numpy arrays or floats."""
    costs = (CTRL_COST * (action * action).sum(-1)
             + CONTACT_COST * (contact_forces * contact_forces).sum(-1))
    if kind == "velocity":
        return -abs(x_velocity - task_value) + VELOCITY_BONUS + SURVIVE_REWARD - costs
    return task_value * x_velocity + SURVIVE_REWARD - costs


def is_healthy(qpos: np.ndarray, qvel: np.ndarray) -> bool:
    """Ant-v5's health check: a finite state and the torso's height within [0.2, 1.0]."""
    finite = bool(np.isfinite(qpos).all() and np.isfinite(qvel).all())
    return finite and HEALTHY_Z[0] <= qpos[2] <= HEALTHY_Z[1]


class AntBatch(LocomotionBatch):
    """``tasks x trajectories`` ants (see ``LocomotionBatch``); an ant ends when unhealthy."""

    robot = "Ant"
    max_velocity = MAX_VELOCITY
    xml = XML

    def _observation_dim(self) -> int:
        forces = (self.model.nbody - 1) * 6  # cfrc_ext without the world body
        return self.model.nq - 2 + self.model.nv + forces

    def _read(self, i: int, d: mujoco.MjData) -> None:
        """qpos without the root x, y; qvel; the clipped contact forces (non-finite numbers
        zeroed); the torso's x position."""
        nq, nv = self.model.nq, self.model.nv
        row = self._obs[i]
        row[: nq - 2] = d.qpos[2:]
        row[nq - 2: nq - 2 + nv] = d.qvel
        row[nq - 2 + nv:] = np.clip(d.cfrc_ext[1:], -1.0, 1.0).reshape(-1)
        if not np.isfinite(row).all():
            np.nan_to_num(row, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        self._x[i] = d.xpos[1, 0]

    def _simulate(self, d: mujoco.MjData) -> None:
        super()._simulate(d)
        mujoco.mj_rnePostConstraint(self.model, d)  # the contact forces, as gymnasium does

    def _healthy(self, d: mujoco.MjData) -> bool:
        return is_healthy(d.qpos, d.qvel)

    def _reward(self, x_velocity: np.ndarray, actions: np.ndarray,
                was_ended: np.ndarray) -> np.ndarray:
        """Contact forces of all bodies (world included), zero for copies that had ended."""
        forces = np.zeros((len(self._datas), self.model.nbody * 6))
        for i, d in enumerate(self._datas):
            if not was_ended[i]:
                forces[i] = np.clip(d.cfrc_ext, -1.0, 1.0).reshape(-1)
        reward = ant_reward(self.kind, self._values, x_velocity, actions, forces)
        return np.nan_to_num(reward, copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # blown-up steps


class _AntTaskEnv(LocomotionTaskEnv, ant_v5.AntEnv):
    """gymnasium Ant-v5 with a task: ``reset_task(task)`` or ``reset(options={"task"})``."""

    robot = "Ant"
    max_velocity = MAX_VELOCITY

    def task_reward(self, task_value: float, x_velocity: float, action: np.ndarray) -> float:
        return ant_reward(self.kind, task_value, x_velocity, action,
                          self.contact_forces.reshape(-1))


class AntVel(_AntTaskEnv):
    """Run at ``task["velocity"]`` (``gymnasium.make("mamlkit/AntVel-v0")``)."""

    kind = "velocity"


class AntDir(_AntTaskEnv):
    """Run in ``task["direction"]`` = +1 or -1 (``gymnasium.make("mamlkit/AntDir-v0")``)."""

    kind = "direction"
