"""Reptile's outer direction (Nichol et al. 2018): the mean over tasks of theta - theta'.

The inner loop is plain first-order SGD and keeps no graph, so the cost is that of ordinary
training on each task. Descending along mean(theta - theta') moves theta towards the tasks'
adapted parameters: an optimiser step with this "gradient" is Reptile's update.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import InnerLoop, Params, adapt
from mamlkit.functional.batching import Batching, TaskOps
from mamlkit.functional.cg import total
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.functional.task_loss import TaskLoss, as_task_loss


def adapt_tasks(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss: str | Callable[..., Any] | TaskLoss,
    inner: InnerLoop,
    data: str = "all",
    batching: Batching | str = "vmap",
) -> tuple[Params, Tensor]:
    """Every task's first-order adapted parameters (stacked ``[tasks, ...]``) and its query loss.

    ``data="all"`` adapts on support and query examples together (Reptile has no query split;
    supervised ``(x, y)`` tasks only), ``"support"`` on the support set only. No graph is kept.
    """
    if data not in ("all", "support"):
        raise ValueError(f"Reptile data must be 'all' or 'support', got {data!r}.")
    support, query = batch.support, batch.query
    if data == "all":
        (sx, sy), (qx, qy) = support, query
        support = (torch.cat([sx, qx], dim=1), torch.cat([sy, qy], dim=1))
    theta = {n: t.detach() for n, t in params.items()}
    inner = inner.but(first_order=True)

    def per_task(ops: TaskOps, p: Params, task: Any) -> tuple[Params, Tensor]:
        s, q = task
        adapted = adapt(ops, p, s, inner)
        return {n: t.detach() for n, t in adapted.items()}, ops.value(adapted, q)

    batching = batching if isinstance(batching, Batching) else Batching(batching)
    with torch.no_grad():
        return batching.map(per_task, model, buffers, as_task_loss(batch.loss or loss), theta,
                            (support, query))


def reptile_direction(params: Mapping[str, Tensor], adapted: Mapping[str, Tensor]) -> Params:
    """mean over tasks of (theta - theta'_T): the update direction to descend along."""
    return {n: p.detach() - adapted[n].mean(dim=0) for n, p in params.items()}


def surrogate(value: Tensor, params: Mapping[str, Tensor],
              direction: Mapping[str, Tensor]) -> Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``params`` is ``direction``.

    Lets update rules that are not the gradient of a loss (Reptile, implicit MAML) go through
    ``loss.backward(); optimizer.step()`` like every other learner.
    """
    linear = total((p * direction[n].detach()).sum() for n, p in params.items())
    return value.detach() + (linear - linear.detach())


__all__ = ["adapt_tasks", "reptile_direction", "surrogate"]
