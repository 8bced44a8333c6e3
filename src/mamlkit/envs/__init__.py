"""Multi-task environments for meta-RL: gymnasium ids under ``mamlkit/`` and batched versions.

``gymnasium.make("mamlkit/Navigation2D-v0")`` (horizon 100), ``"mamlkit/HalfCheetahVel-v0"`` and
``"mamlkit/HalfCheetahDir-v0"``, ``"mamlkit/AntVel-v0"`` and ``"mamlkit/AntDir-v0"`` (horizon
200, the paper's) give single environments with ``sample_tasks(n, seed)`` and
``reset_task(task)`` after ``import mamlkit`` (``mamlkit.GYMNASIUM_IDS`` registers them);
``make_batch_env("nav2d" | "cheetah-vel" | "cheetah-dir" | "ant-vel" | "ant-dir")`` gives the
``BatchEnv`` that the samplers in ``mamlkit.rl`` step for a whole meta-batch at once.

Speeds on the 2-core shared CPU, 1 torch thread, environment alone (random actions):
``Navigation2DBatch`` 3.5M-10M steps/s, ``HalfCheetahBatch`` 10k-19k steps/s, ``AntBatch``
~5k steps/s; with a policy in the loop and with worker processes see ``mamlkit.rl.sampling``
and ``mamlkit.rl.workers`` (``benchmarks/rl_sampling.py``).
"""

from __future__ import annotations

from typing import Any

from mamlkit.envs.base import BatchEnv
from mamlkit.envs.navigation import Navigation2DBatch, expert_action
from mamlkit.registry import ENVS, discover


def __getattr__(name: str) -> Any:
    """``Navigation2D`` is a gymnasium environment: loaded on first use, so that this package (and
    ``mamlkit.rl``, which supervised training imports) loads where gymnasium is not installed."""
    if name == "Navigation2D":
        from mamlkit.envs.navigation_gym import Navigation2D

        return Navigation2D
    raise AttributeError(f"module 'mamlkit.envs' has no attribute {name!r}")


def make_batch_env(name: str, **kwargs: Any) -> BatchEnv:
    """The batched environment registered as ``name`` (``mamlkit.registry.ENVS``); ``kwargs`` go
    to its class (``horizon``, nav2d's ``reward`` and ``done_threshold``, the MuJoCo tasks'
    ``clip_actions``)."""
    discover(__name__)
    spec = ENVS.get(name)
    if spec is None:
        raise ValueError(f"Unknown environment {name!r}; choose one of {', '.join(ENVS)}.")
    return spec.make(**kwargs)


__all__ = ["BatchEnv", "Navigation2D", "Navigation2DBatch", "expert_action",
           "make_batch_env"]
