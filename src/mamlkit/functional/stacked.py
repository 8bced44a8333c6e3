"""Task stacking: a third batching strategy, for models that can run many tasks in one call.

A model that declares ``supports_task_stacking = True`` (mamlkit's ``Conv4``), called through
``functional_call`` with parameters that carry a leading task dimension ``T`` and an input
``[T, N, ...]``, returns ``[T, N, ...]``: every task computed with its own parameters, tasks never
mixed. Then the gradient of the sum of the per-task losses with respect to the stacked parameters
is every task's own inner gradient, and plain ``torch.autograd.grad`` (``create_graph`` for second
order) gives all of them at once. No ``vmap``: the model picks kernels that are fast for stacked
weights (grouped channels-last convolutions) and exact at second order (fused batch norm, whose
second-order gradients under ``vmap`` are wrong in torch 2.13).

Tasks go through in chunks of ``chunk_size`` (default ``DEFAULT_CHUNK``): on CPU a few tasks per
call keep activations in cache; all tasks in one call is slower (benchmarks/conv_batching.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit.functional.adapt import InnerLR, Params, StepSize, is_zero, sgd_update, step_size
from mamlkit.functional.losses import LossFn
from mamlkit.tasks.batch import TaskBatch

# Tasks per model call; measured fastest on CPU for Conv4 on Omniglot shapes (1 and 2 threads).
DEFAULT_CHUNK = 4


def supports_task_stacking(model: nn.Module) -> bool:
    """True for models that accept parameters stacked over tasks (see the module docstring)."""
    return bool(getattr(model, "supports_task_stacking", False))


def stack_params(params: Mapping[str, Tensor], tasks: int) -> Params:
    """Every parameter repeated over a new leading task dimension (a view, no copy)."""
    return {n: p.unsqueeze(0).expand(tasks, *p.shape) for n, p in params.items()}


def _differentiable(t: Tensor, outer_grad: bool) -> Tensor:
    """``t`` itself if the outer loop differentiates through it, else a fresh leaf for the inner
    gradient (frozen parameters; under ``no_grad``, where even views of parameters claim
    ``requires_grad`` but lead nowhere)."""
    return t if outer_grad and t.requires_grad else t.detach().requires_grad_()


def stacked_losses(model: nn.Module, params: Mapping[str, Tensor],
                   buffers: Mapping[str, Tensor], x: Tensor, y: Tensor,
                   loss_fn: LossFn) -> Tensor:
    """Each task's loss ``[T]`` from one call of the model with stacked parameters."""
    out = functional_call(model, (dict(params), dict(buffers)), (x,))
    return torch.stack([loss_fn(out[t], y[t]) for t in range(out.shape[0])])


def stacked_inner_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    lr: StepSize,
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
) -> Params:
    """One SGD step of every task on its support set; ``params`` are stacked ``[T, ...]``."""
    params = dict(params)
    if is_zero(lr):
        return params
    names = list(params) if adapt_names is None else list(adapt_names)
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        current = {n: _differentiable(params[n], outer_grad) for n in names}
        loss = stacked_losses(model, {**params, **current}, buffers, x, y, loss_fn).sum()
        grads = torch.autograd.grad(loss, list(current.values()),
                                    create_graph=outer_grad and not first_order)
        return {**params, **sgd_update(current, dict(zip(names, grads, strict=True)), lr)}


def stacked_adapt(model: nn.Module, params: Mapping[str, Tensor],
                  buffers: Mapping[str, Tensor], x: Tensor, y: Tensor, loss_fn: LossFn,
                  inner_lr: InnerLR, steps: int, first_order: bool = False,
                  adapt_names: Sequence[str] | None = None) -> Params:
    """``steps`` inner steps of every task from shared ``params``; returns stacked parameters."""
    adapted = stack_params(params, x.shape[0])
    for step in range(steps):
        adapted = stacked_inner_step(model, adapted, buffers, x, y, loss_fn,
                                     step_size(inner_lr, step), first_order, adapt_names)
    return adapted


def _chunks(batch: TaskBatch, chunk_size: int | None) -> list[TaskBatch]:
    size = chunk_size or DEFAULT_CHUNK
    return [batch[i:i + size] for i in range(0, batch.num_tasks, size)]


def _check(model: nn.Module) -> None:
    if not supports_task_stacking(model):
        raise ValueError(f"{type(model).__name__} does not support task stacking; use "
                         "batching='vmap' or 'loop'.")


def stacked_task_losses(
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
    chunk_size: int | None = None,
) -> Tensor:
    """Query loss after adaptation of every task in ``batch`` (shape ``[tasks]``), stacked."""
    _check(model)
    losses = []
    for part in _chunks(batch, chunk_size):
        (sx, sy), (qx, qy) = part.support, part.query
        adapted = stacked_adapt(model, params, buffers, sx, sy, loss_fn, inner_lr, steps,
                                first_order, adapt_names)
        losses.append(stacked_losses(model, adapted, buffers, qx, qy, loss_fn))
    return torch.cat(losses)


def stacked_adaptation_curve(
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
    chunk_size: int | None = None,
) -> Tensor:
    """Like ``meta.adaptation_curve`` (``[len(steps), tasks]``, no meta-gradient), stacked."""
    _check(model)
    wanted = sorted(set(int(s) for s in steps))
    detached = {n: t.detach() for n, t in params.items()}
    parts = []
    for part in _chunks(batch, chunk_size):
        (sx, sy), (qx, qy) = part.support, part.query
        adapted, values = stack_params(detached, part.num_tasks), []
        for step in range(wanted[-1] + 1):
            if step in wanted:
                with torch.no_grad():
                    values.append(stacked_losses(model, adapted, buffers, qx, qy, metric_fn))
            if step < wanted[-1]:
                adapted = stacked_inner_step(model, adapted, buffers, sx, sy, loss_fn,
                                             step_size(inner_lr, step), True, adapt_names)
                adapted = {n: t.detach() for n, t in adapted.items()}
        parts.append(torch.stack(values))
    curve = torch.cat(parts, dim=1)
    order = [wanted.index(int(s)) for s in steps]
    return curve[order]


__all__ = ["DEFAULT_CHUNK", "stack_params", "stacked_adapt", "stacked_adaptation_curve",
           "stacked_inner_step", "stacked_losses", "stacked_task_losses",
           "supports_task_stacking"]
