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
Actions are clipped to [-1, 1]^8 before the simulation and the control cost.

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
import torch
from gymnasium.envs.mujoco import ant_v5
from torch import Tensor

from mamlkit.envs.base import Generators, per_task
from mamlkit.envs.half_cheetah import _quiet_deprecation, load_model
from mamlkit.functional.seeding import generator_from

CTRL_COST = 0.005
CONTACT_COST = 0.0005
SURVIVE_REWARD = 0.05
VELOCITY_BONUS = 1.0  # the velocity task's extra reward per step (reference code)
HEALTHY_Z = (0.2, 1.0)
FRAME_SKIP = 5
RESET_NOISE = 0.1
MAX_VELOCITY = 3.0
KINDS = ("velocity", "direction")
XML = os.path.join(os.path.dirname(ant_v5.__file__), "assets", "ant.xml")


def sample_ant_tasks(kind: str, num_tasks: int,
                     generator: torch.Generator | int | None) -> list[dict]:
    """``{"velocity": v}`` with ``v ~ U[0, 3]``, or ``{"direction": +-1}`` with equal odds."""
    g = generator_from(generator)
    if kind == "velocity":
        return [{"velocity": v} for v in torch.empty(num_tasks).uniform_(
            0.0, MAX_VELOCITY, generator=g).tolist()]
    if kind == "direction":
        return [{"direction": int(d) * 2 - 1}
                for d in torch.randint(2, (num_tasks,), generator=g).tolist()]
    raise ValueError(f"Ant task kind must be one of {KINDS}, got {kind!r}.")


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


class _AntTaskEnv(ant_v5.AntEnv):
    """gymnasium Ant-v5 with a task: ``reset_task(task)`` or ``reset(options={"task"})``."""

    kind = "velocity"

    def __init__(self, task: dict | None = None, clip_actions: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clip_actions = clip_actions
        self._task = task or self.sample_tasks(1, 0)[0]

    @classmethod
    def sample_tasks(cls, num_tasks: int, seed: int | torch.Generator | None = None) -> list[dict]:
        """The same tasks as the batch version's ``sample_tasks`` for the same seed."""
        return sample_ant_tasks(cls.kind, num_tasks, seed)

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
        reward = float(ant_reward(self.kind, float(self._task[self.kind]), info["x_velocity"],
                                  action, self.contact_forces.reshape(-1)))
        info["task"] = dict(self._task)
        return observation, reward, terminated, truncated, info


class AntVel(_AntTaskEnv):
    """Run at ``task["velocity"]`` (``gymnasium.make("mamlkit/AntVel-v0")``)."""

    kind = "velocity"


class AntDir(_AntTaskEnv):
    """Run in ``task["direction"]`` = +1 or -1 (``gymnasium.make("mamlkit/AntDir-v0")``)."""

    kind = "direction"


class AntBatch:
    """``tasks x trajectories`` ants: many ``MjData`` of one ``MjModel``, no rendering.

    ``reset`` draws gymnasium's reset noise (qpos + U[-0.1, 0.1], qvel + 0.1 N(0, 1)) from each
    task's torch generator instead of gymnasium's numpy one. Ended copies are not simulated.
    """

    def __init__(self, kind: str = "velocity", horizon: int = 200, clip_actions: bool = True,
                 xml_file: str = XML) -> None:
        if kind not in KINDS:
            raise ValueError(f"Ant task kind must be one of {KINDS}, got {kind!r}.")
        self.kind = kind
        self.horizon = int(horizon)
        self.clip_actions = clip_actions
        self.model = load_model(xml_file)
        self.dt = self.model.opt.timestep * FRAME_SKIP
        self.action_dim = self.model.nu
        self._forces = (self.model.nbody - 1) * 6  # cfrc_ext without the world body
        self.observation_dim = self.model.nq - 2 + self.model.nv + self._forces
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
        self._ended = np.zeros(0, dtype=bool)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator | int | None) -> list[dict]:
        return sample_ant_tasks(self.kind, num_tasks, generator)

    def task_tensor(self, tasks: list[dict]) -> Tensor:
        """Goal velocities or directions, ``[tasks, 1]``."""
        return torch.tensor([[float(t[self.kind])] for t in tasks], dtype=torch.float32)

    def _read(self, i: int, d: mujoco.MjData) -> None:
        """Copy ``d``'s observation into row ``i`` of ``self._obs`` and its torso x into
        ``self._x`` (non-finite numbers zeroed in the observation)."""
        nq, nv = self.model.nq, self.model.nv
        row = self._obs[i]
        row[: nq - 2] = d.qpos[2:]
        row[nq - 2: nq - 2 + nv] = d.qvel
        row[nq - 2 + nv:] = np.clip(d.cfrc_ext[1:], -1.0, 1.0).reshape(-1)
        if not np.isfinite(row).all():
            np.nan_to_num(row, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        self._x[i] = d.xpos[1, 0]

    def _observations(self) -> Tensor:
        return torch.from_numpy(self._obs).float().reshape(*self._shape, -1)

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
        self._shape = (num_tasks, n)
        self._values = np.repeat([float(t[self.kind]) for t in tasks], n)
        self._obs = np.empty((num_tasks * n, self.observation_dim))
        self._x = np.empty(num_tasks * n)
        self._ended = np.zeros(num_tasks * n, dtype=bool)
        return self.set_state(qpos_np, qvel_np, reset=True)

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray, reset: bool = False) -> Tensor:
        """Put every copy in the given states (``[T, N, nq]``, ``[T, N, nv]``), e.g. to replay a
        gymnasium episode; returns the observations."""
        qpos = np.asarray(qpos, dtype=np.float64).reshape(len(self._datas), -1)
        qvel = np.asarray(qvel, dtype=np.float64).reshape(len(self._datas), -1)
        for i, d in enumerate(self._datas):
            if reset:
                mujoco.mj_resetData(self.model, d)
            d.qpos[:] = qpos[i]
            d.qvel[:] = qvel[i]
            mujoco.mj_forward(self.model, d)
            self._read(i, d)
        return self._observations()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of every copy that has not ended; ended copies earn 0 and stay done."""
        a = actions.detach().cpu().double().reshape(len(self._datas), -1).numpy()
        if self.clip_actions:
            a = np.clip(a, self._low, self._high)
        x_before = self._x.copy()
        forces = np.zeros((len(self._datas), self._forces + 6))
        model, ended = self.model, self._ended
        was_ended = ended.copy()
        for i, d in enumerate(self._datas):
            if ended[i]:
                continue
            d.ctrl[:] = a[i]
            mujoco.mj_step(model, d, nstep=FRAME_SKIP)
            mujoco.mj_rnePostConstraint(model, d)
            forces[i] = np.clip(d.cfrc_ext, -1.0, 1.0).reshape(-1)
            self._read(i, d)
            ended[i] = not is_healthy(d.qpos, d.qvel)
        x_velocity = (self._x - x_before) / self.dt
        reward = ant_reward(self.kind, self._values, x_velocity, a, forces)
        reward[was_ended] = 0.0
        np.nan_to_num(reward, copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # a blown-up step
        reward_t = torch.from_numpy(reward).float().reshape(self._shape)
        return (self._observations(), reward_t,
                torch.from_numpy(ended.copy()).reshape(self._shape))
