"""Trajectories for a whole meta-batch: all tasks x trajectories step together.

The policy sees ``[1, trajectories, obs_dim]``, one call per task and time step, and returns
Gaussian ``(mean, std)``; a policy with per-task (adapted) parameters provides
``task_slice(start, stop)``, the policy of tasks ``start:stop``. One call per task, on a fresh
copy of its observations, keeps a task's actions a function of its own observations and
parameters alone (one product over all tasks changes their low bits with the batch).

Randomness is drawn per task: ``sample_episodes`` draws one seed per task from ``generator``
and each task's reset noise and action noise come from that task's own generator. The episodes of
a task therefore do not depend on which other tasks share the batch, which is what lets
``rl.workers.SamplerPool`` split tasks across processes and still return exactly the episodes of
in-process sampling. Speed and why one torch thread: docs/meta-rl.md ("Sampling speed").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mamlkit.envs.base import BatchEnv
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.threads import one_torch_thread

PolicyFn = Callable[[Tensor], tuple[Tensor, Tensor]]


def policy_of_tasks(policy: PolicyFn, start: int, stop: int) -> PolicyFn:
    """The policy of tasks ``start:stop``: ``policy.task_slice`` where it has per-task parameters,
    else ``policy`` itself (shared by all tasks)."""
    slicer = getattr(policy, "task_slice", None)
    return slicer(start, stop) if callable(slicer) else policy


def _task_by_task(policies: Sequence[PolicyFn], obs: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` of every task from its own policy on a fresh copy of its observations."""
    outputs = [task_policy(obs[i:i + 1].clone()) for i, task_policy in enumerate(policies)]
    return torch.cat([mean for mean, _ in outputs]), torch.cat([std for _, std in outputs])


_SEED_HIGH = 2**62


def task_seeds(generator: torch.Generator, num_tasks: int) -> list[int]:
    """One seed per task drawn from ``generator`` (what ``sample_episodes`` and the pool use)."""
    return [int(s) for s in torch.randint(_SEED_HIGH, (num_tasks,), generator=generator)]


def task_generators(generator: torch.Generator, num_tasks: int) -> list[torch.Generator]:
    """One generator per task, seeded from ``generator`` (consumes ``num_tasks`` draws)."""
    return [torch.Generator().manual_seed(s) for s in task_seeds(generator, num_tasks)]


def sample_episodes(env: BatchEnv, policy: PolicyFn, tasks: list[dict], num_trajectories: int,
                    generator: torch.Generator, horizon: int | None = None) -> Episodes:
    """``num_trajectories`` episodes of every task with ``actions = mean + std * noise``.

    Runs under ``no_grad``; the losses recompute log-probabilities with gradients later.
    Episodes that end early keep ``mask`` 0 (and reward 0) for their remaining steps; sampling
    stops once every episode has ended.
    """
    return rollout(env, policy, tasks, num_trajectories, task_generators(generator, len(tasks)),
                   horizon)


@torch.no_grad()
def rollout(env: BatchEnv, policy: PolicyFn, tasks: list[dict], num_trajectories: int,
            generators: Sequence[torch.Generator], horizon: int | None = None) -> Episodes:
    """``sample_episodes`` with one generator per task already made (what workers run)."""
    if len(generators) != len(tasks):
        raise ValueError(f"rollout needs one generator per task: {len(tasks)} tasks, "
                         f"{len(generators)} generators.")
    with one_torch_thread():  # the policy's 20-row calls are too small to split
        return _rollout(env, policy, tasks, num_trajectories, generators, horizon)


def _rollout(env: BatchEnv, policy: PolicyFn, tasks: list[dict], num_trajectories: int,
             generators: Sequence[torch.Generator], horizon: int | None) -> Episodes:
    horizon = env.horizon if horizon is None else int(horizon)
    num_tasks, n = len(tasks), num_trajectories
    obs = env.reset(tasks, n, list(generators))
    noise = torch.stack([torch.randn(n, horizon, env.action_dim, generator=g)
                         for g in generators])
    observations = torch.zeros(num_tasks, n, horizon, env.observation_dim)
    actions = torch.zeros(num_tasks, n, horizon, env.action_dim)
    rewards = torch.zeros(num_tasks, n, horizon)
    mask = torch.zeros(num_tasks, n, horizon)
    alive = torch.ones(num_tasks, n)
    policies = [policy_of_tasks(policy, i, i + 1) for i in range(num_tasks)]
    for t in range(horizon):
        mean, std = _task_by_task(policies, obs)
        action = (mean + std * noise[:, :, t].to(mean.device)).float().cpu()
        observations[:, :, t] = obs.cpu()
        actions[:, :, t] = action
        mask[:, :, t] = alive
        obs, reward, done = env.step(action)
        rewards[:, :, t] = reward.cpu() * alive
        alive = alive * (~done.cpu()).float()
        if not alive.any():
            break
    return Episodes(observations, actions, rewards, mask, list(tasks))
