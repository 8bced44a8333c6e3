"""What training, evaluation and plots share about adaptation: the step size evaluation adapts
with, and a learner's adapted policies for sampling RL tasks."""

from __future__ import annotations

from mamlkit.functional.task_batch import StepData
from mamlkit.rl.losses import RLData
from mamlkit.rl.policy import sampling_fn
from mamlkit.run.config import Config


def inner_lr_at_eval(config: Config) -> float:
    """The step size evaluation adapts with (an alpha = 0 run: the preset's alpha)."""
    return config.eval_inner_lr or config.inner_lr


def adapted_policy(learner, inner_lr: float | None = None):
    """``policy_for`` of ``RLTasks``: support data so far -> the policy that samples next."""
    def policy_for(support: list[RLData]):
        if not support:
            return sampling_fn(learner.model)
        params, batched = learner.adapted_params(StepData(support), len(support), inner_lr)
        return sampling_fn(learner.model, params, batched)

    return policy_for


def query_actions(ops, params, query: RLData):
    """The adapted policy's ``(mean, std)`` on a task's query observations."""
    return ops.forward(params, query.observations)


__all__ = ["adapted_policy", "inner_lr_at_eval", "query_actions"]
