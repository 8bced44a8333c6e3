"""What the MuJoCo locomotion tasks (half-cheetah, ant) share: task sampling, a mixin that gives
a gymnasium MuJoCo environment a task, and a batched environment that steps many ``MjData`` of one
``MjModel`` in a Python loop, split over threads (``mj_step`` releases the GIL). The robots fill
in the model, the observation, the reward and the health check.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import mujoco
import numpy as np
import torch
from torch import Tensor

from mamlkit.envs.base import Generators, per_task
from mamlkit.functional.seeding import generator_from

KINDS = ("velocity", "direction")
FRAME_SKIP = 5
RESET_NOISE = 0.1


@contextmanager
def quiet_deprecation() -> Iterator[None]:
    """Drop MuJoCo 3.3+'s warning that gymnasium's XML files use the deprecated
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


def load_xml_model(xml_file: str) -> mujoco.MjModel:
    """The ``MjModel`` of ``xml_file`` without the deprecation noise."""
    with quiet_deprecation():
        return mujoco.MjModel.from_xml_path(xml_file)


def sample_locomotion_tasks(kind: str, num_tasks: int, generator: torch.Generator | int | None,
                            max_velocity: float, robot: str) -> list[dict]:
    """``{"velocity": v}`` with ``v ~ U[0, max_velocity]``, or ``{"direction": +-1}`` with equal
    odds."""
    g = generator_from(generator)
    if kind == "velocity":
        return [{"velocity": v} for v in torch.empty(num_tasks).uniform_(
            0.0, max_velocity, generator=g).tolist()]
    if kind == "direction":
        return [{"direction": int(d) * 2 - 1}
                for d in torch.randint(2, (num_tasks,), generator=g).tolist()]
    raise ValueError(f"{robot} task kind must be one of {KINDS}, got {kind!r}.")


if TYPE_CHECKING:  # the mixin's host, for the checker
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv as _Host
    from gymnasium.spaces import Box
else:
    _Host = object


class LocomotionTaskEnv(_Host):
    """Mixin before a gymnasium MuJoCo environment: ``reset_task(task)`` or
    ``reset(options={"task"})``, actions clipped to the action space, the task's reward.

    Subclasses set ``kind``, ``robot`` and ``max_velocity`` and define ``task_reward``."""

    kind = "velocity"
    robot = "Robot"
    max_velocity = 1.0
    action_space: Box  # what MuJoCo environments act in

    def __init__(self, task: dict | None = None, clip_actions: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clip_actions = clip_actions
        self._task = task or self.sample_tasks(1, 0)[0]

    @classmethod
    def sample_tasks(cls, num_tasks: int, seed: int | torch.Generator | None = None) -> list[dict]:
        """The same tasks as the batch version's ``sample_tasks`` for the same seed."""
        return sample_locomotion_tasks(cls.kind, num_tasks, seed, cls.max_velocity, cls.robot)

    def task_reward(self, task_value: float, x_velocity: float, action: np.ndarray) -> float:
        raise NotImplementedError

    def reset_task(self, task: dict) -> None:
        self._task = task

    @property
    def task(self) -> dict:
        return self._task

    def _initialize_simulation(self):
        with quiet_deprecation():
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
        reward = float(self.task_reward(float(self._task[self.kind]), info["x_velocity"], action))
        extended: dict[str, Any] = info  # the same dict, which now holds the task too
        extended["task"] = dict(self._task)
        return observation, reward, terminated, truncated, extended


class LocomotionBatch:
    """``tasks x trajectories`` robots: many ``MjData`` of one ``MjModel``, no rendering.

    ``reset`` draws gymnasium's reset noise (qpos + U[-0.1, 0.1], qvel + 0.1 N(0, 1)) from each
    task's torch generator instead of gymnasium's numpy one. Copies that ended (``_healthy``
    false) are not simulated and earn 0. Subclasses set ``robot``, ``max_velocity`` and ``xml`` (the
    default model), define ``_observation_dim``, ``_read`` (observation and x position of one
    copy) and ``_reward``, and may extend ``_simulate`` and ``_healthy``.

    ``threads`` > 1 steps contiguous shares of the copies in that many threads: each copy is
    stepped and read exactly as with one thread (same results, bit for bit), while MuJoCo's
    C code runs on several cores at once. ``frame_skip``: simulator steps per action (5,
    gymnasium's; the paper's code, rllab, stepped once per action).
    """

    robot = "Robot"
    max_velocity = 1.0
    xml = ""

    def __init__(self, kind: str = "velocity", horizon: int = 200, clip_actions: bool = True,
                 xml_file: str | None = None, threads: int = 1,
                 frame_skip: int = FRAME_SKIP) -> None:
        if kind not in KINDS:
            raise ValueError(f"{self.robot} task kind must be one of {KINDS}, got {kind!r}.")
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads!r}.")
        if int(frame_skip) < 1:
            raise ValueError(f"frame_skip must be at least 1, got {frame_skip!r}.")
        self.threads = int(threads)
        self.frame_skip = int(frame_skip)
        self._pool: ThreadPoolExecutor | None = None
        self.kind = kind
        self.horizon = int(horizon)
        self.clip_actions = clip_actions
        self.model = load_xml_model(xml_file or self.xml)
        self.dt = self.model.opt.timestep * self.frame_skip
        self.action_dim = self.model.nu
        self.observation_dim = self._observation_dim()
        low, high = self.model.actuator_ctrlrange.T
        self._low, self._high = low.copy(), high.copy()
        init = mujoco.MjData(self.model)
        self._init_qpos = init.qpos.copy()
        self._init_qvel = init.qvel.copy()
        self._datas: list[mujoco.MjData] = []
        self._allocate((0, 0), [])

    def sample_tasks(self, num_tasks: int, generator: torch.Generator | int | None) -> list[dict]:
        return sample_locomotion_tasks(self.kind, num_tasks, generator, self.max_velocity,
                                       self.robot)

    def _observation_dim(self) -> int:
        raise NotImplementedError

    def _read(self, i: int, d: mujoco.MjData) -> None:
        """Copy ``d``'s observation into ``self._obs[i]`` and its x position into ``self._x[i]``."""
        raise NotImplementedError

    def _reward(self, x_velocity: np.ndarray, actions: np.ndarray,
                was_ended: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _simulate(self, d: mujoco.MjData) -> None:
        mujoco.mj_step(self.model, d, nstep=self.frame_skip)

    def _healthy(self, d: mujoco.MjData) -> bool:
        return True

    def task_tensor(self, tasks: list[dict]) -> Tensor:
        """Goal velocities or directions, ``[tasks, 1]``."""
        return torch.tensor([[float(t[self.kind])] for t in tasks], dtype=torch.float32)

    def _allocate(self, shape: tuple[int, int], tasks: list[dict]) -> None:
        copies = shape[0] * shape[1]
        self._shape = shape
        self._values = np.repeat([float(t[self.kind]) for t in tasks], shape[1])
        self._obs = np.empty((copies, self.observation_dim))
        self._x = np.empty(copies)
        self._ended = np.zeros(copies, dtype=bool)

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
        self._allocate((num_tasks, n), tasks)
        return self.set_state(qpos_np, qvel_np, reset=True)

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray, reset: bool = False) -> Tensor:
        """Put every copy in the given states (``[T, N, nq]``, ``[T, N, nv]``), e.g. to replay a
        gymnasium episode; returns the observations."""
        qpos = np.asarray(qpos, dtype=np.float64).reshape(len(self._datas), -1)
        qvel = np.asarray(qvel, dtype=np.float64).reshape(len(self._datas), -1)
        self._each_share(self._set_copies, qpos, qvel, reset)
        return self._observations()

    def _set_copies(self, start: int, stop: int, qpos: np.ndarray, qvel: np.ndarray,
                    reset: bool) -> None:
        for i in range(start, stop):
            d = self._datas[i]
            if reset:
                mujoco.mj_resetData(self.model, d)
            d.qpos[:] = qpos[i]
            d.qvel[:] = qvel[i]
            mujoco.mj_forward(self.model, d)
            self._read(i, d)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of every copy that has not ended; ended copies earn 0 and stay done."""
        a = actions.detach().cpu().double().reshape(len(self._datas), -1).numpy()
        if self.clip_actions:
            a = np.clip(a, self._low, self._high)
        x_before = self._x.copy()
        was_ended = self._ended.copy()
        self._each_share(self._step_copies, a)
        x_velocity = (self._x - x_before) / self.dt
        reward = self._reward(x_velocity, a, was_ended)
        reward[was_ended] = 0.0
        reward_t = torch.from_numpy(reward).float().reshape(self._shape)
        return (self._observations(), reward_t,
                torch.from_numpy(self._ended.copy()).reshape(self._shape))

    def _step_copies(self, start: int, stop: int, actions: np.ndarray) -> None:
        """Step, read and health-check copies ``start:stop`` (one thread's share)."""
        ended = self._ended
        for i in range(start, stop):
            if ended[i]:
                continue
            d = self._datas[i]
            d.ctrl[:] = actions[i]
            self._simulate(d)
            self._read(i, d)
            ended[i] = not self._healthy(d)

    def _each_share(self, work: Any, *args: Any) -> None:
        """``work(start, stop, *args)`` over contiguous shares of the copies, one per thread."""
        copies = len(self._datas)
        shares = min(self.threads, copies)
        if shares <= 1:
            work(0, copies, *args)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mujoco")
        bounds = [copies * k // shares for k in range(shares + 1)]
        futures = [self._pool.submit(work, bounds[k], bounds[k + 1], *args)
                   for k in range(shares)]
        for future in futures:
            future.result()

    def __getstate__(self) -> dict:
        """Pickles without its thread pool (a copy starts its own when it steps)."""
        return {**self.__dict__, "_pool": None}

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
