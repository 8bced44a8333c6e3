"""Layer 1: pure functions over parameter dicts, built on torch.func. All calculus is here.

Imports torch only: the task container (``TaskBatch``), the task losses, the inner step for any
task loss, the one batching strategy, the meta-loss and its variants, one conjugate-gradient
solver.
"""

from mamlkit.functional.adapt import (
    BoundLoss,
    InnerLoop,
    InnerLR,
    InnerStep,
    Params,
    adapt,
    gradient_step,
    inner_step,
    sgd_update,
    step_size,
    trajectory,
)
from mamlkit.functional.batching import (
    BATCHINGS,
    Batching,
    TaskOps,
    choose_batching,
    has_torch_batch_norm,
    resolve_batching,
)
from mamlkit.functional.cg import conjugate_gradient
from mamlkit.functional.losses import accuracy, cross_entropy, mse, resolve_loss, resolve_metric
from mamlkit.functional.meta import adaptation_curve, map_adapted, meta_loss, task_losses
from mamlkit.functional.seeding import generator_from
from mamlkit.functional.task_batch import StepData, TaskBatch
from mamlkit.functional.task_loss import (
    SupervisedLoss,
    TaskLoss,
    as_task_loss,
    as_task_metric,
    forward,
)

__all__ = [
    "BATCHINGS",
    "Batching",
    "BoundLoss",
    "InnerLR",
    "InnerLoop",
    "InnerStep",
    "Params",
    "StepData",
    "SupervisedLoss",
    "TaskBatch",
    "TaskLoss",
    "TaskOps",
    "accuracy",
    "adapt",
    "adaptation_curve",
    "as_task_loss",
    "as_task_metric",
    "choose_batching",
    "conjugate_gradient",
    "cross_entropy",
    "forward",
    "generator_from",
    "gradient_step",
    "has_torch_batch_norm",
    "inner_step",
    "map_adapted",
    "meta_loss",
    "mse",
    "resolve_batching",
    "resolve_loss",
    "resolve_metric",
    "sgd_update",
    "step_size",
    "task_losses",
    "trajectory",
]
