"""RL task distributions (H > 1): an environment, task parameters and a horizon.

A batch of RL tasks holds episodes: the support data of inner step ``k`` are trajectories
sampled with the parameters after ``k`` steps (theta first), the query data trajectories
sampled with the adapted parameters theta'. Sampling the query set needs the adapted policy,
so ``collect`` takes ``policy_for``: support data so far -> the policy that samples next (the
training loop builds it from the learner; this layer knows no learner).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mamlkit.functional.task_batch import StepData, TaskBatch
from mamlkit.functional.task_loss import TaskLoss
from mamlkit.rl.advantages import rl_data
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.losses import RLData, VPGLoss
from mamlkit.rl.sampling import PolicyFn, rollout, task_generators

# support data of the inner steps taken so far ([] for theta) -> the policy that samples next
PolicyFor = Callable[[Sequence[RLData]], PolicyFn]


@dataclass
class RLBatch:
    """One meta-batch of RL tasks: the ``TaskBatch`` the learners see (support = ``StepData``
    of ``RLData`` per inner step, query = ``RLData``, loss = the VPG inner loss), the average
    returns before and after adaptation, and the episodes themselves."""

    tasks: TaskBatch
    pre_return: float
    post_return: float
    support_episodes: list[Episodes] = field(default_factory=list)
    query_episodes: Episodes | None = None


@dataclass
class RLTasks:
    """p(T) of an RL environment: ``env.sample_tasks`` gives the task parameters (goals,
    velocities); every task samples ``trajectories`` episodes of ``horizon`` steps per set,
    with advantages from the linear baseline (fitted in sample, or across halves of the
    trajectories with ``baseline_fit="cross"``) and GAE (``discount``, ``gae_lambda``). ``loss`` is
    the inner loss: VPG, or an estimator of ``rl/estimators.py`` that also differentiates the
    support trajectories' dependence on theta (``estimator``: maml | dice | lvc)."""

    env: Any
    trajectories: int = 20
    horizon: int | None = None
    discount: float = 0.99
    gae_lambda: float = 1.0
    loss: TaskLoss = field(default_factory=VPGLoss)
    metric: str = "return"
    pool: Any = None  # an rl.workers.SamplerPool of env's kind: sampling spread over processes
    baseline_fit: str = "in_sample"

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> list[dict]:
        return self.env.sample_tasks(num_tasks, generator)

    def _sample(self, policy: PolicyFn, tasks: list[dict], generator: torch.Generator,
                share: slice) -> Episodes:
        """Episodes of ``tasks[share]``; the generator advances as for all tasks and every
        task keeps its own seed, so a share's episodes are those of one process."""
        generators = task_generators(generator, len(tasks))
        if self.pool is not None:
            return self.pool.rollout(policy, tasks[share], self.trajectories, generators[share],
                                     self.horizon)
        return rollout(self.env, policy, tasks[share], self.trajectories, generators[share],
                       self.horizon)

    def data(self, episodes: Episodes) -> RLData:
        return rl_data(episodes, self.discount, self.gae_lambda, self.baseline_fit == "cross")

    def collect(self, tasks: list[dict], generator: torch.Generator, policy_for: PolicyFor,
                steps: int, task_slice: slice | None = None) -> RLBatch:
        """Sample support trajectories with theta, adapt, and sample query ones with theta'.

        Sampling needs no gradients: the learner recomputes the adapted parameters
        differentiably from the stored support data. ``task_slice`` keeps only those tasks (a
        torchrun rank's share).
        """
        share = task_slice or slice(None)
        support: list[RLData] = []
        support_episodes: list[Episodes] = []
        for _ in range(steps):
            episodes = self._sample(policy_for(support), tasks, generator, share)
            support.append(self.data(episodes))
            support_episodes.append(episodes)
        query_episodes = self._sample(policy_for(support), tasks, generator, share)
        post = query_episodes.mean_return()
        pre = support_episodes[0].mean_return() if support_episodes else post
        query = self.data(query_episodes)
        batch = TaskBatch(StepData(support) if support else StepData([query]), query,
                          self.loss)
        return RLBatch(batch, pre, post, support_episodes, query_episodes)

    def returns_after_steps(self, tasks: list[dict], generator: torch.Generator,
                            policy_for: PolicyFor, steps: Sequence[int],
                            keep_episodes: bool = False) -> tuple[torch.Tensor, list[Episodes]]:
        """Average return per task ``[len(steps), T]`` of trajectories sampled after each
        number of inner steps (fresh trajectories after every step, as in training)."""
        support: list[RLData] = []
        rows, kept = {}, []
        for k in range(max(steps) + 1):
            episodes = self._sample(policy_for(support), tasks, generator, slice(None))
            if k in steps:
                rows[k] = episodes.task_returns()
                if keep_episodes:
                    kept.append(episodes)
            if k < max(steps):
                support.append(self.data(episodes))
        return torch.stack([rows[k] for k in steps]), kept


__all__ = ["PolicyFor", "RLBatch", "RLTasks"]
