"""Implicit MAML (Rajeswaran et al. 2019): the meta-gradient through the inner fixed point.

The inner problem is proximally regularised, phi* = argmin_phi L_s(phi) + lam/2 ||phi - theta||^2.
At its solution d phi*/d theta = (I + H_s/lam)^-1 with H_s the support-loss Hessian at phi*, so
the meta-gradient of L_q(phi*) is v solving (I + H_s/lam) v = grad L_q(phi*). Conjugate gradient
finds v from Hessian-vector products only, and the inner loop keeps no graph: memory does not grow
with the number of inner steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import InnerLR, Params, step_size, task_loss
from mamlkit.functional.losses import LossFn
from mamlkit.functional.meta import curve_over_steps, over_tasks
from mamlkit.tasks.batch import TaskBatch


def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def conjugate_gradient(matvec: Callable[[Params], Params], b: Mapping[str, Tensor],
                       steps: int, min_curvature: float = 1e-3) -> Params:
    """Approximately solve ``A x = b`` for symmetric ``A`` given as ``matvec``, from ``x = 0``.

    Truncated as in Newton-CG: once a search direction ``p`` has curvature
    ``p.Ap <= min_curvature * p.p`` the iteration stops where it is. For iMAML's
    ``A = I + H/lam`` that happens where a network's Hessian has eigenvalues near or below
    ``-lam`` (A is then not positive definite); without the stop, one such task sent the
    meta-gradient to infinity in our sinusoid runs. Stopped at the first step it returns ``b``
    (the first-order answer). Written without data-dependent Python branches, for ``vmap``.
    """
    x = {n: torch.zeros_like(t) for n, t in b.items()}
    r = dict(b)
    p = dict(b)
    rr = _dot(r, r)
    active = torch.ones_like(rr, dtype=torch.bool)
    for step in range(steps):
        ap = matvec(p)
        pap = _dot(p, ap)
        active = active & (pap > min_curvature * _dot(p, p))
        if step == 0:
            first = active
        alpha = torch.where(active, rr / torch.where(active, pap, 1), 0)
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rr_new = _dot(r, r)
        beta = torch.where(rr != 0, rr_new / torch.where(rr != 0, rr, 1), 0)
        p = {n: r[n] + beta * p[n] for n in p}
        rr = rr_new
    # stopped at once: fall back to b itself, the first-order answer (as Newton-CG does)
    return {n: torch.where(first, x[n], b[n]) for n in x}


def proximal_adapt(model: nn.Module, params: Mapping[str, Tensor],
                   buffers: Mapping[str, Tensor], x: Tensor, y: Tensor, loss_fn: LossFn,
                   inner_lr: InnerLR, steps: int, lam: float,
                   max_grad_norm: float | None = None) -> Params:
    """``steps`` of gradient descent on ``L_s(phi) + lam/2 ||phi - theta||^2`` from theta.

    First order by construction (no graph is needed: the meta-gradient is implicit). The implicit
    gradient depends only on where the inner loop ends, not on the path, so the path may be
    made safe: ``max_grad_norm`` clips each step's gradient norm. Without it, plain steps of a
    fixed size diverge once the network's support-loss curvature exceeds about ``2 / inner_lr``,
    which meta-training on sinusoid reached after ~600 iterations with ``inner_lr`` 0.01.
    """
    theta = {n: t.detach() for n, t in params.items()}
    phi = dict(theta)
    for step in range(steps):
        phi = proximal_step(model, phi, theta, buffers, x, y, loss_fn,
                            step_size(inner_lr, step), lam, max_grad_norm)
    return phi


def proximal_step(model: nn.Module, phi: Mapping[str, Tensor], theta: Mapping[str, Tensor],
                  buffers: Mapping[str, Tensor], x: Tensor, y: Tensor, loss_fn: LossFn,
                  lr: Tensor | float, lam: float, max_grad_norm: float | None = None) -> Params:
    """One gradient step on the proximal objective, its gradient norm clipped if asked."""
    grads = torch.func.grad(lambda q: task_loss(model, q, buffers, x, y, loss_fn))(dict(phi))
    direction = {n: grads[n] + lam * (phi[n] - theta[n]) for n in phi}
    if max_grad_norm is not None:
        norm = torch.sqrt(_dot(direction, direction))
        scale = torch.clamp(max_grad_norm / (norm + 1e-12), max=1.0)
        direction = {n: scale * d for n, d in direction.items()}
    return {n: phi[n] - lr * direction[n] for n in phi}


def proximal_adaptation_curve(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss_fn: LossFn,
    metric_fn: LossFn,
    inner_lr: InnerLR,
    steps: Sequence[int],
    lam: float,
    max_grad_norm: float | None = None,
    batching: str = "vmap",
    chunk_size: int | None = None,
) -> Tensor:
    """Query metric after each number of proximal inner steps: ``[len(steps), tasks]``.

    iMAML adapts at test time the way it was meta-trained (Rajeswaran et al. 2019): the
    proximal problem, not plain gradient steps, whose fixed point is what theta was trained for.
    """
    def step_fn(theta, phi, b, sx, sy, step):
        return proximal_step(model, phi, theta, b, sx, sy, loss_fn, step_size(inner_lr, step),
                             lam, max_grad_norm)

    return curve_over_steps(model, params, buffers, batch, metric_fn=metric_fn, step_fn=step_fn,
                            steps=steps, batching=batching, chunk_size=chunk_size)


def implicit_task_grad(model: nn.Module, params: Mapping[str, Tensor],
                       buffers: Mapping[str, Tensor], sx: Tensor, sy: Tensor, qx: Tensor,
                       qy: Tensor, *, loss_fn: LossFn, inner_lr: InnerLR, steps: int, lam: float,
                       cg_steps: int, max_grad_norm: float | None = None
                       ) -> tuple[Params, Tensor]:
    """One task's implicit meta-gradient ``(I + H_s/lam)^-1 grad L_q(phi)`` and query loss."""
    phi = proximal_adapt(model, params, buffers, sx, sy, loss_fn, inner_lr, steps, lam,
                         max_grad_norm)
    query_grad, query_loss = torch.func.grad_and_value(
        lambda q: task_loss(model, q, buffers, qx, qy, loss_fn))(phi)
    support_grad = torch.func.grad(lambda q: task_loss(model, q, buffers, sx, sy, loss_fn))
    # the Hessian is symmetric, so a vector-Jacobian product of the gradient is H v; the
    # linearisation at phi is built once and reused by every conjugate-gradient step
    _, hessian_vjp = torch.func.vjp(support_grad, phi)

    def matvec(v: Params) -> Params:
        (hv,) = hessian_vjp(v)
        return {n: v[n] + hv[n] / lam for n in v}

    return conjugate_gradient(matvec, query_grad, cg_steps), query_loss


def implicit_meta_grad(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss_fn: LossFn,
    inner_lr: InnerLR,
    steps: int,
    lam: float,
    cg_steps: int,
    max_grad_norm: float | None = None,
    batching: str = "vmap",
    chunk_size: int | None = None,
) -> tuple[Params, Tensor]:
    """The implicit meta-gradient averaged over tasks, and each task's query loss ``[tasks]``."""
    if lam <= 0:
        raise ValueError(f"The proximal strength lambda must be > 0, got {lam}.")
    theta = {n: t.detach() for n, t in params.items()}
    names = list(theta)

    def per_task(p, b, sx, sy, qx, qy):
        grads, loss = implicit_task_grad(model, p, b, sx, sy, qx, qy, loss_fn=loss_fn,
                                         inner_lr=inner_lr, steps=steps, lam=lam,
                                         cg_steps=cg_steps, max_grad_norm=max_grad_norm)
        return torch.cat([*(grads[n].flatten() for n in names), loss.reshape(1)])

    with torch.no_grad():
        flat = over_tasks(per_task, batch, theta, dict(buffers), batching, chunk_size)
    grads, offset = {}, 0
    for n in names:
        size = theta[n].numel()
        grads[n] = flat[:, offset:offset + size].mean(dim=0).view_as(theta[n])
        offset += size
    return grads, flat[:, -1]


__all__ = ["conjugate_gradient", "implicit_meta_grad", "implicit_task_grad", "proximal_adapt",
           "proximal_adaptation_curve", "proximal_step"]
