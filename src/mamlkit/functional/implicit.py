"""Implicit MAML (Rajeswaran et al. 2019): the meta-gradient through the inner fixed point.

The inner problem is proximally regularised, phi* = argmin_phi L_s(phi) + lam/2 ||phi - theta||^2.
At its solution d phi*/d theta = (I + H_s/lam)^-1 with H_s the support-loss Hessian at phi*, so
the meta-gradient of L_q(phi*) is v solving (I + H_s/lam) v = grad L_q(phi*). Conjugate gradient
finds v from Hessian-vector products only, and the inner loop keeps no graph: memory does not grow
with the number of inner steps. The inner loop is a ``ProximalSolver`` (``functional/proximal.py``):
the formula holds only where it has reached phi*.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import BoundLoss, InnerLR, Params
from mamlkit.functional.batching import Batching, TaskOps
from mamlkit.functional.cg import conjugate_gradient
from mamlkit.functional.meta import values_at
from mamlkit.functional.proximal import ProximalSolver
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.functional.task_loss import TaskLoss, as_task_loss, as_task_metric


def proximal_adapt(loss: BoundLoss, params: Mapping[str, Tensor], support: Any,
                   inner_lr: InnerLR, steps: int, lam: float,
                   max_grad_norm: float | None = None, solver: str = "gd",
                   tol: float = 0.0) -> Params:
    """``steps`` steps of ``solver`` (``functional/proximal.py``) on
    ``L_s(phi) + lam/2 ||phi - theta||^2`` from theta: the approximate proximal optimum.

    First order by construction (no graph is needed: the meta-gradient is implicit). The implicit
    gradient depends only on where the inner loop ends, not on the path, so the path may be
    made safe: ``max_grad_norm`` clips each ``gd`` step's gradient norm.
    """
    return ProximalSolver(solver, inner_lr, lam, tol, max_grad_norm).solve(loss, params, support,
                                                                          steps)


def _per_task_batching(batching: Batching | str,
                       solver: ProximalSolver) -> tuple[Batching, ProximalSolver]:
    """Conjugate gradient needs per-task Hessian-vector products: stacked runs as a loop. A loop
    runs one task at a time, so its solver may branch on values (``eager``)."""
    batching = batching if isinstance(batching, Batching) else Batching(batching)
    if batching.kind == "stacked":
        batching = Batching("loop", batching.chunk_size)
    return batching, replace(solver, eager=batching.kind == "loop")


def proximal_adaptation_curve(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss: str | Callable[..., Any] | TaskLoss,
    metric: str | Callable[..., Any] | TaskLoss,
    solver: ProximalSolver,
    steps: Sequence[int],
    batching: Batching | str = "vmap",
) -> Tensor:
    """Query metric after each number of ``solver`` steps: ``[len(steps), tasks]``.

    iMAML adapts at test time the way it was meta-trained (Rajeswaran et al. 2019): towards the
    proximal optimum, not with plain gradient steps; that fixed point is what theta was trained
    for.
    """
    wanted = sorted(set(int(s) for s in steps))
    metric_loss = as_task_metric(metric)
    batching, solver = _per_task_batching(batching, solver)

    def per_task(ops: TaskOps, theta: Params, data: Any) -> Tensor:
        support, query = data
        return values_at(solver.iterates(ops.bound(), theta, support, wanted[-1]), wanted,
                         lambda phi: ops.value(phi, query, metric_loss))

    with torch.no_grad():
        detached = {n: t.detach() for n, t in params.items()}
        curve = batching.map(per_task, model, dict(buffers), as_task_loss(batch.loss or loss),
                             detached, (batch.support, batch.query))
    return curve.T[[wanted.index(int(s)) for s in steps]]


def implicit_task_grad(loss: BoundLoss, params: Mapping[str, Tensor], support: Any, query: Any,
                       *, solver: ProximalSolver, steps: int,
                       cg_steps: int) -> tuple[Params, Tensor]:
    """One task's implicit meta-gradient ``(I + H_s/lam)^-1 grad L_q(phi)`` and query loss."""
    lam = solver.lam
    phi = solver.solve(loss, params, support, steps)
    query_grad, query_loss = torch.func.grad_and_value(lambda q: loss(q, query))(phi)
    support_grad = torch.func.grad(lambda q: loss(q, support))
    # the Hessian is symmetric, so a vector-Jacobian product of the gradient is H v; the
    # linearisation at phi is built once and reused by every conjugate-gradient step
    hessian_vjp = torch.func.vjp(support_grad, phi)[1]

    def matvec(v: Params) -> Params:
        (hv,) = hessian_vjp(v)
        return {n: v[n] + hv[n] / lam for n in v}

    return conjugate_gradient(matvec, query_grad, cg_steps, min_curvature=1e-3), query_loss


def implicit_meta_grad(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss: str | Callable[..., Any] | TaskLoss,
    solver: ProximalSolver,
    steps: int,
    cg_steps: int,
    batching: Batching | str = "vmap",
) -> tuple[Params, Tensor]:
    """The implicit meta-gradient averaged over tasks, and each task's query loss ``[tasks]``."""
    theta = {n: t.detach() for n, t in params.items()}
    names = list(theta)
    batching, solver = _per_task_batching(batching, solver)

    def per_task(ops: TaskOps, p: Params, task: Any) -> Tensor:
        grads, value = implicit_task_grad(ops.bound(), p, *task, solver=solver, steps=steps,
                                          cg_steps=cg_steps)
        return torch.cat([*(grads[n].flatten() for n in names), value.reshape(1)])

    with torch.no_grad():
        flat = batching.map(per_task, model, buffers, as_task_loss(batch.loss or loss), theta,
                            (batch.support, batch.query))
    grads, offset = {}, 0
    for n in names:
        size = theta[n].numel()
        grads[n] = flat[:, offset:offset + size].mean(dim=0).view_as(theta[n])
        offset += size
    return grads, flat[:, -1]


__all__ = ["ProximalSolver", "implicit_meta_grad", "implicit_task_grad", "proximal_adapt",
           "proximal_adaptation_curve"]
