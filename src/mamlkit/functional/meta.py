"""The outer loop's objective and the evaluation curve, over a stack of tasks.

Each is one per-task function (adapt on the support data, then look at the query data) that a
``Batching`` runs for every task of a ``TaskBatch``: in one ``vmap``, a loop, or task-stacked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import InnerLR, Params, step_size
from mamlkit.functional.batching import Batching, TaskOps
from mamlkit.functional.task_batch import TaskBatch, support_at
from mamlkit.functional.task_loss import TaskLoss, as_task_loss, as_task_metric

# Parameters that replace entries before each inner step (MAML++'s per-step batch-norm
# weights); steps past the given ones reuse the last set.
PerStep = Sequence[Mapping[str, Tensor]] | None


def at_step(per_step: PerStep, step: int) -> Mapping[str, Tensor]:
    if not per_step:
        return {}
    return per_step[min(step, len(per_step) - 1)]


def trajectory(ops: TaskOps, params: Mapping[str, Tensor], support: Any, inner_lr: InnerLR,
               steps: int, first_order: bool = False, adapt_names: Sequence[str] | None = None,
               per_step: PerStep = None) -> list[Params]:
    """Parameters after 0, 1, ..., ``steps`` inner steps (``steps + 1`` dicts)."""
    current = {**params, **ops.shared(at_step(per_step, 0))}
    out = [current]
    for step in range(steps):
        current = ops.step(current, support_at(support, step), step_size(inner_lr, step),
                           first_order, adapt_names)
        current = {**current, **ops.shared(at_step(per_step, step + 1))}
        out.append(current)
    return out


def map_adapted(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                batch: TaskBatch, fn: Callable[[TaskOps, Params, Any], Any], *,
                loss: str | Callable | TaskLoss, inner_lr: InnerLR, steps: int,
                first_order: bool = False, adapt_names: Sequence[str] | None = None,
                per_step: PerStep = None, batching: Batching | str = "vmap") -> Any:
    """``fn(ops, adapted, query)`` of every task after ``steps`` inner steps on its support.

    The general form of the outer objective: the query loss for supervised tasks, the adapted
    policy's action distribution on the query trajectories for RL tasks.
    """
    def per_task(ops: TaskOps, p: Params, data: Any) -> Any:
        support, query = data
        adapted = trajectory(ops, p, support, inner_lr, steps, first_order, adapt_names,
                             per_step)[-1]
        return fn(ops, adapted, query)

    batching = batching if isinstance(batching, Batching) else Batching(batching)
    return batching.map(per_task, model, buffers, as_task_loss(batch.loss or loss), params,
                        (batch.support, batch.query))


def query_value(ops: TaskOps, params: Params, query: Any) -> Tensor:
    """The task's loss on its query data: what ``map_adapted`` maps for the meta-loss."""
    return ops.value(params, query)


def task_losses(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                batch: TaskBatch, **kwargs) -> Tensor:
    """Query loss after adaptation of every task in ``batch``: a tensor of shape ``[tasks]``."""
    return map_adapted(model, params, buffers, batch, query_value, **kwargs)


def meta_loss(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
              batch: TaskBatch, **kwargs) -> Tensor:
    """The meta-objective: mean over tasks of the query loss after adaptation.

    Differentiable with respect to ``params`` (second order unless ``first_order=True``).
    """
    return task_losses(model, params, buffers, batch, **kwargs).mean()


# (ops, theta, adapted, support, step index) -> adapted after that step
StepFn = Callable[[TaskOps, Params, Params, Any, int], Params]


def plain_steps(inner_lr: InnerLR, adapt_names: Sequence[str] | None = None) -> StepFn:
    """First-order gradient steps of ``inner_lr``: how most learners adapt at evaluation."""
    def step_fn(ops, theta, adapted, support, step):
        return ops.step(adapted, support, step_size(inner_lr, step), True, adapt_names)

    return step_fn


def curve_over_steps(model: nn.Module, params: Mapping[str, Tensor],
                     buffers: Mapping[str, Tensor], batch: TaskBatch, *,
                     loss: str | Callable | TaskLoss, metric: str | Callable | TaskLoss,
                     step_fn: StepFn, steps: Sequence[int], per_step: PerStep = None,
                     batching: Batching | str = "vmap") -> Tensor:
    """Query metric after each number of ``step_fn`` steps in ``steps``: ``[len(steps), tasks]``.

    The evaluation loop every learner shares; a learner brings its own inner step (plain
    gradient steps, iMAML's proximal ones). No meta-gradient: runs under no_grad from a
    detached theta.
    """
    wanted = sorted(set(int(s) for s in steps))
    metric_loss = as_task_metric(metric)
    frozen = [{n: t.detach() for n, t in p.items()} for p in per_step] if per_step else None

    def per_task(ops: TaskOps, p: Params, data: Any) -> Tensor:
        (support, query), values = data, []
        adapted = {**p, **ops.shared(at_step(frozen, 0))}
        for step in range(wanted[-1] + 1):
            if step in wanted:
                values.append(ops.value(adapted, query, metric_loss))
            if step < wanted[-1]:
                adapted = step_fn(ops, p, adapted, support_at(support, step), step)
                adapted = {**{n: t.detach() for n, t in adapted.items()},
                           **ops.shared(at_step(frozen, step + 1))}
        return torch.stack(values, dim=-1)

    batching = batching if isinstance(batching, Batching) else Batching(batching)
    with torch.no_grad():
        detached = {n: t.detach() for n, t in params.items()}
        curve = batching.map(per_task, model, dict(buffers), as_task_loss(batch.loss or loss),
                             detached, (batch.support, batch.query))
    return curve.T[[wanted.index(int(s)) for s in steps]]


def adaptation_curve(model: nn.Module, params: Mapping[str, Tensor],
                     buffers: Mapping[str, Tensor], batch: TaskBatch, *,
                     loss: str | Callable | TaskLoss, metric: str | Callable | TaskLoss,
                     inner_lr: InnerLR, steps: Sequence[int],
                     adapt_names: Sequence[str] | None = None, per_step: PerStep = None,
                     batching: Batching | str = "vmap") -> Tensor:
    """Query metric of every task after each number of plain inner steps: ``[len, tasks]``."""
    return curve_over_steps(model, params, buffers, batch, loss=loss, metric=metric,
                            step_fn=plain_steps(inner_lr, adapt_names), steps=steps,
                            per_step=per_step, batching=batching)


__all__ = ["PerStep", "StepFn", "adaptation_curve", "at_step", "curve_over_steps", "map_adapted",
           "meta_loss", "plain_steps", "query_value", "task_losses", "trajectory"]
