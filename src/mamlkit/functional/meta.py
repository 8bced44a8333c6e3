"""The outer loop's objective and the evaluation curve, over a stack of tasks.

Each is one per-task function (adapt on the support data, then look at the query data) that a
``Batching`` runs for every task of a ``TaskBatch``: in one ``vmap``, a loop, or task-stacked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import (
    InnerLoop,
    InnerStep,
    Params,
    adapt,
    detached,
    gradient_step,
    trajectory,
)
from mamlkit.functional.batching import Batching, TaskOps
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.functional.task_loss import TaskLoss, as_task_loss, as_task_metric


def map_adapted(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                batch: TaskBatch, fn: Callable[[TaskOps, Params, Any], Any], *,
                loss: str | Callable[..., Any] | TaskLoss, inner: InnerLoop,
                batching: Batching | str = "vmap") -> Any:
    """``fn(ops, adapted, query)`` of every task after ``inner``'s steps on its support.

    The general form of the outer objective: the query loss for supervised tasks, the adapted
    policy's action distribution on the query trajectories for RL tasks.
    """
    def per_task(ops: TaskOps, p: Params, data: Any) -> Any:
        support, query = data
        return fn(ops, adapt(ops, p, support, inner), query)

    batching = batching if isinstance(batching, Batching) else Batching(batching)
    return batching.map(per_task, model, buffers, as_task_loss(batch.loss or loss), params,
                        (batch.support, batch.query))


def query_value(ops: TaskOps, params: Params, query: Any) -> Tensor:
    """The task's loss on its query data: what ``map_adapted`` maps for the meta-loss."""
    return ops.value(params, query)


def task_losses(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                batch: TaskBatch, **kwargs: Any) -> Tensor:
    """Query loss after adaptation of every task in ``batch``: a tensor of shape ``[tasks]``."""
    losses: Tensor = map_adapted(model, params, buffers, batch, query_value, **kwargs)
    return losses


def meta_loss(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
              batch: TaskBatch, **kwargs: Any) -> Tensor:
    """The meta-objective: mean over tasks of the query loss after adaptation.

    Differentiable with respect to ``params`` (second order unless ``inner.first_order``).
    """
    return task_losses(model, params, buffers, batch, **kwargs).mean()


def values_at(iterates: Iterable[Params], wanted: Sequence[int],
              value: Callable[[Params], Tensor]) -> Tensor:
    """``value`` of the iterates numbered in ``wanted`` (sorted), stacked on the last dim; the
    iterates are not asked for past the last one wanted."""
    values = []
    for k, params in enumerate(iterates):
        if k in wanted:
            values.append(value(params))
        if k == wanted[-1]:
            break
    return torch.stack(values, dim=-1)


def adaptation_curve(model: nn.Module, params: Mapping[str, Tensor],
                     buffers: Mapping[str, Tensor], batch: TaskBatch, *,
                     loss: str | Callable[..., Any] | TaskLoss,
                     metric: str | Callable[..., Any] | TaskLoss,
                     inner: InnerLoop, steps: Sequence[int], step: InnerStep = gradient_step,
                     batching: Batching | str = "vmap") -> Tensor:
    """Query metric of every task after each number of inner steps in ``steps``:
    ``[len(steps), tasks]``.

    The evaluation loop every learner shares: first-order ``step``s (``inner.steps`` and
    ``inner.first_order`` are set by the curve), each step's result detached. No meta-gradient:
    runs under no_grad from a detached theta.
    """
    wanted = sorted(set(int(s) for s in steps))
    metric_loss = as_task_metric(metric)
    frozen = ([{n: t.detach() for n, t in p.items()} for p in inner.per_step]
              if inner.per_step else None)
    walk = inner.but(steps=wanted[-1], first_order=True, per_step=frozen)

    def per_task(ops: TaskOps, p: Params, data: Any) -> Tensor:
        support, query = data
        return values_at(trajectory(ops, p, support, walk, detached(step)), wanted,
                         lambda adapted: ops.value(adapted, query, metric_loss))

    batching = batching if isinstance(batching, Batching) else Batching(batching)
    with torch.no_grad():
        detached_theta = {n: t.detach() for n, t in params.items()}
        curve = batching.map(per_task, model, dict(buffers), as_task_loss(batch.loss or loss),
                             detached_theta, (batch.support, batch.query))
    return curve.T[[wanted.index(int(s)) for s in steps]]


__all__ = ["adaptation_curve", "map_adapted", "meta_loss", "query_value", "task_losses",
           "values_at"]
