"""Reptile's outer direction (Nichol et al. 2018): the mean over tasks of theta - theta'.

The inner loop is plain first-order SGD and keeps no graph, so the cost is that of ordinary
training on each task. Descending along mean(theta - theta') moves theta towards the tasks'
adapted parameters: an optimiser step with this "gradient" is Reptile's update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import InnerLR, Params, adapt, task_loss
from mamlkit.functional.losses import LossFn
from mamlkit.functional.stacked import DEFAULT_CHUNK, stacked_adapt, stacked_losses
from mamlkit.tasks.batch import TaskBatch


def adapt_tasks(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss_fn: LossFn,
    inner_lr: InnerLR,
    steps: int,
    data: str = "all",
    adapt_names: Sequence[str] | None = None,
    batching: str = "vmap",
    chunk_size: int | None = None,
) -> tuple[Params, Tensor]:
    """Every task's first-order adapted parameters (stacked ``[tasks, ...]``) and its query loss.

    ``data="all"`` adapts on support and query examples together (Reptile has no query split),
    ``"support"`` on the support set only. No graph is kept.
    """
    if data not in ("all", "support"):
        raise ValueError(f"Reptile data must be 'all' or 'support', got {data!r}.")
    (sx, sy), (qx, qy) = batch.support, batch.query
    if data == "all":
        sx, sy = torch.cat([sx, qx], dim=1), torch.cat([sy, qy], dim=1)
    theta = {n: t.detach() for n, t in params.items()}
    buffers = dict(buffers)
    with torch.no_grad():
        if batching == "stacked":
            size = chunk_size or DEFAULT_CHUNK
            adapted, losses = [], []
            for i in range(0, batch.num_tasks, size):
                part = slice(i, i + size)
                a = stacked_adapt(model, theta, buffers, sx[part], sy[part], loss_fn, inner_lr,
                                  steps, True, adapt_names)
                adapted.append({n: t.detach() for n, t in a.items()})
                losses.append(stacked_losses(model, a, buffers, qx[part], qy[part], loss_fn))
            return ({n: torch.cat([a[n] for a in adapted]) for n in theta}, torch.cat(losses))

        def per_task(x, y, x_query, y_query):
            a = adapt(model, theta, buffers, x, y, loss_fn, inner_lr, steps, True, adapt_names)
            return a, task_loss(model, a, buffers, x_query, y_query, loss_fn)

        if batching == "vmap":
            return torch.func.vmap(per_task, randomness="different",
                                   chunk_size=chunk_size)(sx, sy, qx, qy)
        results = [per_task(sx[i], sy[i], qx[i], qy[i]) for i in range(batch.num_tasks)]
        return ({n: torch.stack([r[0][n] for r in results]) for n in theta},
                torch.stack([r[1] for r in results]))


def reptile_direction(params: Mapping[str, Tensor], adapted: Mapping[str, Tensor]) -> Params:
    """mean over tasks of (theta - theta'_T): the update direction to descend along."""
    return {n: p.detach() - adapted[n].mean(dim=0) for n, p in params.items()}


def surrogate(value: Tensor, params: Mapping[str, Tensor],
              direction: Mapping[str, Tensor]) -> Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``params`` is ``direction``.

    Lets update rules that are not the gradient of a loss (Reptile, implicit MAML) go through
    ``loss.backward(); optimizer.step()`` like every other learner.
    """
    linear = sum((p * direction[n].detach()).sum() for n, p in params.items())
    return value.detach() + (linear - linear.detach())


__all__ = ["adapt_tasks", "reptile_direction", "surrogate"]
