"""Small synthetic meta-RL data and a tiny float64 policy, shared by the rl tests."""

import torch

from mamlkit import StepData, TaskBatch
from mamlkit.rl.losses import RLData, VPGLoss
from mamlkit.rl.policy import GaussianPolicy


def synthetic(tasks=3, n=4, h=5, obs=2, act=2, seed=0, dtype=torch.float64) -> RLData:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(tasks, n, h, dtype=dtype)
    mask[:, 0, h - 2:] = 0.0  # one episode per task ended early
    return RLData(torch.randn(tasks, n, h, obs, generator=g, dtype=dtype),
                  torch.randn(tasks, n, h, act, generator=g, dtype=dtype),
                  torch.randn(tasks, n, h, generator=g, dtype=dtype), mask)


def rl_batch(support, query) -> TaskBatch:
    return TaskBatch(StepData(support), query, VPGLoss())


def query_actions(ops, params, query):
    return ops.forward(params, query.observations)


def distribution(learner, batch):
    """What the outer step needs: the adapted policies' actions on the first k tasks' queries."""
    return lambda k: learner.map_adapted(batch if k is None else batch[:k], query_actions)


def tiny_policy(hidden=(5,), min_std=1e-6):
    torch.manual_seed(0)
    return GaussianPolicy(2, 2, hidden, "tanh", init_std=0.8, min_std=min_std).double()
