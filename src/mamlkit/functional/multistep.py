"""Inner-loop trajectories: the query loss after every inner step (MAML++'s multi-step loss).

A trajectory may swap some parameters per step (``per_step[s]`` replaces entries before step
``s`` and in the parameters after ``s`` steps): MAML++'s per-step batch-norm weights and biases,
which are meta-learned only, never adapted in the inner loop. With one-hot weights on the last
step and no per-step parameters this is exactly MAML's meta-loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import InnerLR, Params, forward, inner_step, step_size
from mamlkit.functional.losses import LossFn
from mamlkit.functional.meta import Batching, over_tasks
from mamlkit.functional.stacked import (
    DEFAULT_CHUNK,
    stack_params,
    stacked_inner_step,
    stacked_losses,
)
from mamlkit.tasks.batch import TaskBatch

PerStep = Sequence[Mapping[str, Tensor]] | None


def _at(per_step: PerStep, step: int) -> Mapping[str, Tensor]:
    """The per-step parameters of ``step``; steps past the trained ones reuse the last set."""
    if not per_step:
        return {}
    return per_step[min(step, len(per_step) - 1)]


def trajectory(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    inner_lr: InnerLR,
    steps: int,
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    per_step: PerStep = None,
    step_fn: Callable[..., Params] = inner_step,
) -> list[Params]:
    """Parameters after 0, 1, ..., ``steps`` inner steps (``steps + 1`` dicts)."""
    current = {**params, **_at(per_step, 0)}
    out = [current]
    for step in range(steps):
        current = step_fn(model, current, buffers, x, y, loss_fn, step_size(inner_lr, step),
                          first_order, adapt_names)
        current = {**current, **_at(per_step, step + 1)}
        out.append(current)
    return out


def _weighted(losses: dict[int, Tensor], weights: Sequence[float], steps: int) -> Tensor:
    """``[objective, last-step loss]``: the weighted sum of step losses and the final one."""
    objective = sum(weights[s - 1] * losses[s] for s in losses if weights[s - 1] != 0)
    return torch.stack([torch.as_tensor(objective).to(losses[steps]), losses[steps]])


def _wanted(weights: Sequence[float], steps: int) -> list[int]:
    return sorted({s for s in range(1, steps + 1) if weights[s - 1] != 0} | {steps})


def multi_step_losses(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss_fn: LossFn,
    inner_lr: InnerLR,
    steps: int,
    weights: Sequence[float],
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    per_step: PerStep = None,
    batching: Batching | str = "vmap",
    chunk_size: int | None = None,
) -> Tensor:
    """Per task ``[objective, last-step query loss]`` (shape ``[tasks, 2]``).

    ``objective = sum_s weights[s-1] * L_query(theta_s)`` over steps ``s = 1..steps``; query
    losses of steps with weight 0 are not computed. ``batching`` is ``vmap``, ``loop`` or
    ``stacked`` (models with ``supports_task_stacking``).
    """
    if steps < 1:
        raise ValueError("The multi-step loss needs at least one inner step.")
    wanted = _wanted(weights, steps)
    if batching == "stacked":
        parts = []
        size = chunk_size or DEFAULT_CHUNK
        for i in range(0, batch.num_tasks, size):
            part = batch[i:i + size]
            (sx, sy), (qx, qy), tasks = part.support, part.query, part.num_tasks
            stacked_per_step = [stack_params(p, tasks) for p in per_step] if per_step else None
            path = trajectory(model, stack_params(params, tasks), buffers, sx, sy, loss_fn,
                              inner_lr, steps, first_order, adapt_names, stacked_per_step,
                              step_fn=stacked_inner_step)
            losses = {s: stacked_losses(model, path[s], buffers, qx, qy, loss_fn)
                      for s in wanted}
            parts.append(_weighted(losses, weights, steps).T)
        return torch.cat(parts)

    def per_task(p, b, sx, sy, qx, qy):
        path = trajectory(model, p, b, sx, sy, loss_fn, inner_lr, steps, first_order,
                          adapt_names, per_step)
        losses = {s: loss_fn(forward(model, path[s], b, qx), qy) for s in wanted}
        return _weighted(losses, weights, steps)

    return over_tasks(per_task, batch, dict(params), dict(buffers), batching, chunk_size)


def trajectory_curve(
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
    per_step: PerStep = None,
    batching: Batching | str = "vmap",
    chunk_size: int | None = None,
) -> Tensor:
    """Query metric after each number of steps in ``steps`` (``[len(steps), tasks]``), for
    evaluation: first order, no meta-gradient, per-step parameters as in training."""
    wanted = sorted(set(int(s) for s in steps))
    last = wanted[-1]
    detached = {n: t.detach() for n, t in params.items()}
    frozen = [{n: t.detach() for n, t in p.items()} for p in per_step] if per_step else None
    if batching == "stacked":
        parts = []
        size = chunk_size or DEFAULT_CHUNK
        for i in range(0, batch.num_tasks, size):
            part = batch[i:i + size]
            (sx, sy), (qx, qy), tasks = part.support, part.query, part.num_tasks
            current = {**stack_params(detached, tasks), **stack_params(_at(frozen, 0), tasks)}
            values = []
            for step in range(last + 1):
                if step in wanted:
                    with torch.no_grad():
                        values.append(stacked_losses(model, current, buffers, qx, qy, metric_fn))
                if step < last:
                    current = stacked_inner_step(model, current, buffers, sx, sy, loss_fn,
                                                 step_size(inner_lr, step), True, adapt_names)
                    current = {**{n: t.detach() for n, t in current.items()},
                               **stack_params(_at(frozen, step + 1), tasks)}
            parts.append(torch.stack(values))
        curve = torch.cat(parts, dim=1)
    else:
        def per_task(p, b, sx, sy, qx, qy):
            path = trajectory(model, p, b, sx, sy, loss_fn, inner_lr, last, True, adapt_names,
                              frozen)
            return torch.stack([metric_fn(forward(model, path[s], b, qx), qy) for s in wanted])

        with torch.no_grad():
            curve = over_tasks(per_task, batch, detached, dict(buffers), batching,
                               chunk_size).T
    return curve[[wanted.index(int(s)) for s in steps]]


__all__ = ["multi_step_losses", "trajectory", "trajectory_curve"]
