"""Layer 1: pure functions over parameter dicts, built on torch.func. All calculus is here."""

from mamlkit.functional.adapt import (
    InnerLR,
    Params,
    adapt,
    forward,
    inner_step,
    sgd_update,
    step_size,
    task_loss,
)
from mamlkit.functional.losses import accuracy, cross_entropy, mse, resolve_loss, resolve_metric
from mamlkit.functional.meta import (
    BATCHINGS,
    adaptation_curve,
    meta_loss,
    query_loss,
    task_losses,
)

__all__ = [
    "BATCHINGS",
    "InnerLR",
    "Params",
    "accuracy",
    "adapt",
    "adaptation_curve",
    "cross_entropy",
    "forward",
    "inner_step",
    "meta_loss",
    "mse",
    "query_loss",
    "resolve_loss",
    "resolve_metric",
    "sgd_update",
    "step_size",
    "task_loss",
    "task_losses",
]
