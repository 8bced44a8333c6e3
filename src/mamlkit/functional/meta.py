"""The outer loop's objective: query losses after adaptation, over a stack of tasks.

Tasks of one ``TaskBatch`` share shapes, so the per-task computation is lifted over the task
dimension with ``torch.func.vmap`` (optionally in chunks to bound memory). A plain Python loop
over the same per-task function is the other batching strategy: it is exact for any module and
can be faster where per-task weights would turn dense kernels into slow grouped ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import (
    InnerLR,
    Params,
    adapt,
    forward,
    inner_step,
    step_size,
    task_loss,
)
from mamlkit.functional.losses import LossFn
from mamlkit.tasks.batch import TaskBatch

Batching = Literal["vmap", "loop"]
BATCHINGS: tuple[str, ...] = ("vmap", "loop")


def query_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    *,
    loss_fn: LossFn,
    inner_lr: InnerLR,
    steps: int,
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
) -> Tensor:
    """L_T(f_theta'): one task's query loss after ``steps`` inner steps on its support set."""
    adapted = adapt(model, params, buffers, support_x, support_y, loss_fn, inner_lr, steps,
                    first_order, adapt_names)
    return task_loss(model, adapted, buffers, query_x, query_y, loss_fn)


def over_tasks(per_task, batch: TaskBatch, params, buffers, batching: Batching,
               chunk_size: int | None) -> Tensor:
    """Apply ``per_task(params, buffers, sx, sy, qx, qy)`` to every task; stack the results."""
    data = (*batch.support, *batch.query)
    if batching == "vmap":
        lifted = torch.func.vmap(per_task, in_dims=(None, None, 0, 0, 0, 0),
                                 randomness="different", chunk_size=chunk_size)
        return lifted(params, buffers, *data)
    if batching == "loop":
        return torch.stack([per_task(params, buffers, *(t[i] for t in data))
                            for i in range(batch.num_tasks)])
    raise ValueError(f"Unknown batching {batching!r}; choose one of {list(BATCHINGS)}.")


def task_losses(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss_fn: LossFn,
    inner_lr: InnerLR,
    steps: int,
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    batching: Batching = "vmap",
    chunk_size: int | None = None,
) -> Tensor:
    """Query loss after adaptation of every task in ``batch``: a tensor of shape ``[tasks]``."""
    per_task = partial(query_loss, model, loss_fn=loss_fn, inner_lr=inner_lr, steps=steps,
                       first_order=first_order, adapt_names=adapt_names)
    return over_tasks(per_task, batch, dict(params), dict(buffers), batching, chunk_size)


def meta_loss(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
              batch: TaskBatch, **kwargs) -> Tensor:
    """The meta-objective: mean over tasks of the query loss after adaptation.

    Differentiable with respect to ``params`` (second order unless ``first_order=True``).
    """
    return task_losses(model, params, buffers, batch, **kwargs).mean()


def adaptation_curve(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss_fn: LossFn,
    metric_fn: LossFn,
    inner_lr: InnerLR,
    steps: Sequence[int],
    adapt_names: Sequence[str] | None = None,
    batching: Batching = "vmap",
    chunk_size: int | None = None,
) -> Tensor:
    """Query metric of every task after each number of inner steps in ``steps``: ``[len, tasks]``.

    For evaluation: no meta-gradient is kept (the inner steps are first order under no_grad).
    """
    def step_fn(theta, adapted, b, sx, sy, step):
        return inner_step(model, adapted, b, sx, sy, loss_fn, step_size(inner_lr, step), True,
                          adapt_names)

    return curve_over_steps(model, params, buffers, batch, metric_fn=metric_fn, step_fn=step_fn,
                            steps=steps, batching=batching, chunk_size=chunk_size)


# (theta, adapted, buffers, support_x, support_y, step index) -> adapted after that step
StepFn = Callable[[Params, Params, Mapping[str, Tensor], Tensor, Tensor, int], Params]


def curve_over_steps(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    metric_fn: LossFn,
    step_fn: StepFn,
    steps: Sequence[int],
    batching: Batching | str = "vmap",
    chunk_size: int | None = None,
) -> Tensor:
    """Query metric after each number of ``step_fn`` steps in ``steps``: ``[len(steps), tasks]``.

    The evaluation loop every learner shares; a learner brings its own inner step (plain
    gradient steps, iMAML's proximal ones). Runs under no_grad from a detached theta.
    """
    wanted = sorted(set(int(s) for s in steps))

    def per_task(p, b, sx, sy, qx, qy):
        values, adapted = [], dict(p)
        for step in range(wanted[-1] + 1):
            if step in wanted:
                values.append(metric_fn(forward(model, adapted, b, qx), qy))
            if step < wanted[-1]:
                adapted = step_fn(p, adapted, b, sx, sy, step)
        return torch.stack(values)

    with torch.no_grad():
        detached = {n: t.detach() for n, t in params.items()}
        curve = over_tasks(per_task, batch, detached, dict(buffers), batching, chunk_size)
    return curve.T[[wanted.index(int(s)) for s in steps]]


__all__ = ["BATCHINGS", "adaptation_curve", "curve_over_steps", "meta_loss", "query_loss",
           "task_losses", "task_loss"]
