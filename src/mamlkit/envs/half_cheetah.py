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
appended the torso's centre of mass (20 numbers).

``HalfCheetahBatch`` steps ``tasks x trajectories`` ``MjData`` of one ``MjModel`` in a Python loop
(``mj_step`` with ``nstep=5``), no rendering: the same physics, bit for bit, as the gymnasium
environment. Measured speeds are in ``mamlkit.envs``'s docstring.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco import half_cheetah_v5
from torch import Tensor

from mamlkit.envs.base import Generators, per_task
from mamlkit.functional.seeding import generator_from

CTRL_COST = 0.05
FRAME_SKIP = 5
RESET_NOISE = 0.1
KINDS = ("velocity", "direction")
XML = os.path.join(os.path.dirname(half_cheetah_v5.__file__), "assets", "half_cheetah.xml")


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    """Drop MuJoCo 3.3+'s warning that gymnasium's half_cheetah.xml uses the deprecated
    ``settotalmass`` (printed and appended to ./MUJOCO_LOG.TXT on every load); pass on others."""
    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def load_model(xml_file: str = XML) -> mujoco.MjModel:
    """The half-cheetah ``MjModel`` without the deprecation noise."""
    with _quiet_deprecation():
        return mujoco.MjModel.from_xml_path(xml_file)


def sample_cheetah_tasks(kind: str, num_tasks: int,
                         generator: torch.Generator | int | None) -> list[dict]:
    """``{"velocity": v}`` with ``v ~ U[0, 2]``, or ``{"direction": +-1}`` with equal odds."""
    g = generator_from(generator)
    if kind == "velocity":
        return [{"velocity": v} for v in torch.empty(num_tasks).uniform_(0.0, 2.0, generator=g)
                .tolist()]
    if kind == "direction":
        return [{"direction": int(d) * 2 - 1}
                for d in torch.randint(2, (num_tasks,), generator=g).tolist()]
    raise ValueError(f"Half-cheetah task kind must be one of {KINDS}, got {kind!r}.")


def cheetah_reward(kind: str, task_value: Any, x_velocity: Any, action: Any) -> Any:
    """The task reward from the forward velocity and the (clipped) action; numpy or torch."""
    ctrl = CTRL_COST * (action * action).sum(-1)
    if kind == "velocity":
        return -abs(x_velocity - task_value) - ctrl
    return task_value * x_velocity - ctrl


def _task_value(kind: str, task: dict) -> float:
    return float(task[kind])


class _CheetahTaskEnv(half_cheetah_v5.HalfCheetahEnv):
    """gymnasium HalfCheetah-v5 with a task: ``reset_task(task)`` or ``reset(options={"task"})``."""

    kind = "velocity"

    def __init__(self, task: dict | None = None, clip_actions: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clip_actions = clip_actions
        self._task = task or self.sample_tasks(1, 0)[0]

    @classmethod
    def sample_tasks(cls, num_tasks: int, seed: int | torch.Generator | None = None) -> list[dict]:
        """The same tasks as the batch version's ``sample_tasks`` for the same seed."""
        return sample_cheetah_tasks(cls.kind, num_tasks, seed)

    def reset_task(self, task: dict) -> None:
        self._task = task

    @property
    def task(self) -> dict:
        return self._task

    def _initialize_simulation(self):
        with _quiet_deprecation():
            return super()._initialize_simulation()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if options and "task" in options:
            self.reset_task(options["task"])
        return super().reset(seed=seed, options=options)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if self.clip_actions:
            action = np.clip(action, self.action_space.low, self.action_space.high)
        observation, _, terminated, truncated, info = super().step(action)
        reward = float(cheetah_reward(self.kind, _task_value(self.kind, self._task),
                                      info["x_velocity"], action))
        info["task"] = dict(self._task)
        return observation, reward, terminated, truncated, info


class HalfCheetahVel(_CheetahTaskEnv):
    """Run at ``task["velocity"]`` (``gymnasium.make("mamlkit/HalfCheetahVel-v0")``)."""

    kind = "velocity"


class HalfCheetahDir(_CheetahTaskEnv):
    """Run in ``task["direction"]`` = +1 or -1 (``gymnasium.make("mamlkit/HalfCheetahDir-v0")``)."""

    kind = "direction"


class HalfCheetahBatch:
    """``tasks x trajectories`` half-cheetahs: many ``MjData`` of one ``MjModel``, no rendering.

    ``reset`` draws gymnasium's reset noise (qpos + U[-0.1, 0.1], qvel + 0.1 N(0, 1)) from each
    task's torch generator instead of gymnasium's numpy one.
    """

    def __init__(self, kind: str = "velocity", horizon: int = 200, clip_actions: bool = True,
                 xml_file: str = XML) -> None:
        if kind not in KINDS:
            raise ValueError(f"Half-cheetah task kind must be one of {KINDS}, got {kind!r}.")
        self.kind = kind
        self.horizon = int(horizon)
        self.clip_actions = clip_actions
        self.model = load_model(xml_file)
        self.dt = self.model.opt.timestep * FRAME_SKIP
        self.action_dim = self.model.nu
        self.observation_dim = self.model.nq - 1 + self.model.nv
        low, high = self.model.actuator_ctrlrange.T
        self._low, self._high = low.copy(), high.copy()
        init = mujoco.MjData(self.model)
        self._init_qpos = init.qpos.copy()
        self._init_qvel = init.qvel.copy()
        self._datas: list[mujoco.MjData] = []
        self._shape = (0, 0)
        self._values = np.zeros(0)
        self._obs = np.empty((0, self.observation_dim))
        self._x = np.empty(0)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator | int | None) -> list[dict]:
        return sample_cheetah_tasks(self.kind, num_tasks, generator)

    def task_tensor(self, tasks: list[dict]) -> Tensor:
        """Goal velocities or directions, ``[tasks, 1]``."""
        return torch.tensor([[_task_value(self.kind, t)] for t in tasks], dtype=torch.float32)

    def _observations(self) -> Tensor:
        """Read every copy's state into ``self._obs`` and ``self._x`` (root x position)."""
        nq = self.model.nq
        obs, x = self._obs, self._x
        for i, d in enumerate(self._datas):
            qpos = d.qpos
            x[i] = qpos[0]
            obs[i, : nq - 1] = qpos[1:]
            obs[i, nq - 1:] = d.qvel
        return torch.from_numpy(obs).float().reshape(*self._shape, -1)

    def reset(self, tasks: list[dict], num_trajectories: int,
              generator: Generators | None = None) -> Tensor:
        num_tasks, n = len(tasks), num_trajectories
        nq, nv = self.model.nq, self.model.nv
        qpos, qvel = [], []
        for g in per_task(generator, num_tasks):
            qpos.append(torch.empty(n, nq, dtype=torch.float64)
                        .uniform_(-RESET_NOISE, RESET_NOISE, generator=g))
            qvel.append(RESET_NOISE * torch.randn(n, nv, dtype=torch.float64, generator=g))
        qpos_np = torch.cat(qpos).numpy() + self._init_qpos
        qvel_np = torch.cat(qvel).numpy() + self._init_qvel
        while len(self._datas) < num_tasks * n:
            self._datas.append(mujoco.MjData(self.model))
        del self._datas[num_tasks * n:]
        for i, d in enumerate(self._datas):
            mujoco.mj_resetData(self.model, d)
            d.qpos[:] = qpos_np[i]
            d.qvel[:] = qvel_np[i]
            mujoco.mj_forward(self.model, d)
        self._shape = (num_tasks, n)
        self._values = np.repeat([_task_value(self.kind, t) for t in tasks], n)
        self._obs = np.empty((num_tasks * n, self.observation_dim))
        self._x = np.empty(num_tasks * n)
        return self._observations()

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> Tensor:
        """Put every copy in the given states (``[T, N, nq]``, ``[T, N, nv]``), e.g. to replay a
        gymnasium episode; returns the observations."""
        qpos = np.asarray(qpos, dtype=np.float64).reshape(len(self._datas), -1)
        qvel = np.asarray(qvel, dtype=np.float64).reshape(len(self._datas), -1)
        for i, d in enumerate(self._datas):
            d.qpos[:] = qpos[i]
            d.qvel[:] = qvel[i]
            mujoco.mj_forward(self.model, d)
        return self._observations()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = actions.detach().cpu().double().reshape(len(self._datas), -1).numpy()
        if self.clip_actions:
            a = np.clip(a, self._low, self._high)
        x_before = self._x.copy()
        model = self.model
        for i, d in enumerate(self._datas):
            d.ctrl[:] = a[i]
            mujoco.mj_step(model, d, nstep=FRAME_SKIP)
        observations = self._observations()
        x_velocity = (self._x - x_before) / self.dt
        reward = cheetah_reward(self.kind, self._values, x_velocity, a)
        reward_t = torch.from_numpy(reward).float().reshape(self._shape)
        return observations, reward_t, torch.zeros(self._shape, dtype=torch.bool)
