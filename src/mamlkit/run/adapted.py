"""What training, evaluation and plots share about adaptation: the step size evaluation adapts
with, and a learner's adapted policies for sampling RL tasks."""

from __future__ import annotations

from collections.abc import Sequence

from mamlkit.functional.task_batch import StepData
from mamlkit.rl.losses import RLData
from mamlkit.rl.policy import sampling_fn
from mamlkit.rl.sampling import PolicyFn
from mamlkit.run.config import Config
from mamlkit.run.learner import InnerLr, Learner
from mamlkit.tasks.rl import PolicyFor


def inner_lr_at_eval(config: Config, steps: int | None = None) -> float | list[float]:
    """The step size evaluation adapts with (an alpha = 0 run: the preset's alpha), or the
    per-step schedule of ``eval_inner_lr`` with its last entry repeated up to ``steps`` (default:
    the most steps evaluation takes), as the paper's 0.1 then 0.05."""
    lr = config.eval_inner_lr if config.eval_inner_lr is not None else config.inner_lr
    if not isinstance(lr, list):
        return lr or config.inner_lr
    steps = max(steps or 0, *config.eval_steps, config.inner_steps, len(lr))
    return lr + lr[-1:] * (steps - len(lr))


def adapted_policy(learner: Learner, inner_lr: InnerLr = None) -> PolicyFor:
    """``policy_for`` of ``RLTasks``: support data so far -> the policy that samples next."""
    def policy_for(support: Sequence[RLData]) -> PolicyFn:
        if not support:
            return sampling_fn(learner.model)
        params, batched = learner.adapted_params(StepData(support), len(support), inner_lr)
        return sampling_fn(learner.model, params, batched)

    return policy_for


def query_actions(ops, params, query: RLData):
    """The adapted policy's ``(mean, std)`` on a task's query observations."""
    return ops.forward(params, query.observations)


__all__ = ["adapted_policy", "inner_lr_at_eval", "query_actions"]
