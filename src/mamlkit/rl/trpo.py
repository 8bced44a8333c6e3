"""TRPO's update: conjugate gradient on Fisher (KL Hessian) products, then a line search.

Pure functions over a flat parameter vector and closures, so the same code steps a plain policy
or the meta-parameters of MAML, where the loss and the KL are computed *through* the inner
adaptation. Two products with the same mathematics at the current parameters: the KL's Hessian
by reverse-over-reverse (``hessian_vector_product``, which then differentiates the inner gradient
twice), and its Gauss-Newton form ``J^T M J`` (``gauss_newton_vector_product``: one Jacobian- and
one transposed-Jacobian product of the policy's outputs, a third fewer FLOPs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from mamlkit.functional.cg import conjugate_gradient, total
from mamlkit.functional.flat import flat, unflat


def solve(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
          tol: float = 1e-10) -> Tensor:
    """``A x = b`` for the flat vectors of TRPO, with the library's conjugate-gradient solver."""
    x = conjugate_gradient(lambda v: {"x": matvec(v["x"])}, {"x": b}, iters, tol=tol,
                           inner=lambda u, v: u["x"].dot(v["x"]))
    return x["x"].detach()


def no_reduction(tensor: Tensor) -> Tensor:
    """The identity, for ``reduce``: one process holds the whole meta-batch."""
    return tensor


def hessian_vector_product(kl_fn: Callable[[], Tensor], params: Sequence[Tensor],
                           damping: float,
                           reduce: Callable[[Tensor], Tensor] = no_reduction
                           ) -> Callable[[Tensor], Tensor]:
    """``v -> (H + damping I) v`` with H the Hessian of ``kl_fn()`` at ``params``.

    The KL's gradient is built once with ``create_graph`` and reused for every product.
    ``reduce`` sums a rank's share into the whole meta-batch's (distributed training).
    """
    kl = kl_fn()
    grads = flat(torch.autograd.grad(kl, params, create_graph=True))

    def matvec(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(grads.dot(v.detach()), params, retain_graph=True)
        return reduce(flat(hv).detach()) + damping * v

    return matvec


def _hessian_operator(kl_fn: Callable[[], Tensor], params: Sequence[Tensor], damping: float,
                      reduce: Callable[[Tensor], Tensor]
                      ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``hessian_vector_product`` and its quadratic form ``v -> v'(H + damping I)v``."""
    matvec = hessian_vector_product(kl_fn, params, damping, reduce)
    return matvec, lambda v: v.dot(matvec(v))


class GaussNewton(NamedTuple):
    """The curvature ``H = J^T M J`` of a divergence at its minimum: ``outputs()`` are tensors
    differentiable in the parameters (the policy's mean and std through the adaptation), J their
    Jacobian, and ``curvature`` the divergence's second derivative in each output element (M,
    diagonal, the shapes of the outputs). At the old policy the KL has zero value and gradient,
    so its Hessian is exactly this form: the second-derivative-of-the-outputs term has a zero
    factor."""

    outputs: Callable[[], Sequence[Tensor]]
    curvature: Sequence[Tensor]


def gauss_newton_vector_product(curvature: GaussNewton, params: Sequence[Tensor],
                                damping: float,
                                reduce: Callable[[Tensor], Tensor] = no_reduction
                                ) -> Callable[[Tensor], Tensor]:
    """``v -> (J^T M J + damping I) v`` without forming J.

    ``Jv`` comes from the double-vjp trick: ``J^T u`` is built once with ``create_graph`` for a
    dummy ``u`` (linear in ``u``), and each product differentiates it in ``u``; ``J^T (M Jv)`` is
    a backward through the outputs' graph, also built once. Both graphs serve every CG
    iteration, and neither differentiates the KL's gradient (forward-mode ``jvp`` recomputes the
    adaptation each time and cost more in our measurements, benchmarks/rl_meta_step.py).
    """
    return _gauss_newton_operator(curvature, params, damping, reduce)[0]


def _gauss_newton_operator(curvature: GaussNewton, params: Sequence[Tensor], damping: float,
                           reduce: Callable[[Tensor], Tensor]
                           ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``v -> (H + damping I) v`` and ``v -> v'(H + damping I)v = (Jv)'M(Jv) + damping v'v``:
    the quadratic form needs ``Jv`` only, half a product."""
    params = list(params)
    outputs = tuple(curvature.outputs())
    if not outputs:  # nothing here depends on the parameters (a rank without subsampled tasks)
        def nothing(v: Tensor) -> Tensor:
            return reduce(torch.zeros_like(v)) + damping * v

        return nothing, lambda v: reduce(v.new_zeros(())) + damping * v.dot(v)
    dummies = tuple(torch.zeros_like(o, requires_grad=True) for o in outputs)
    transposed = flat(torch.autograd.grad(outputs, params, dummies, create_graph=True,
                                          allow_unused=True, materialize_grads=True))

    def jacobian_product(v: Tensor) -> tuple[Tensor, ...]:
        if not transposed.requires_grad:  # the outputs do not depend on the parameters
            return tuple(torch.zeros_like(o) for o in outputs)
        return torch.autograd.grad(transposed, dummies, v.detach(), retain_graph=True,
                                   allow_unused=True, materialize_grads=True)

    def matvec(v: Tensor) -> Tensor:
        weighted = tuple(m * t for m, t in zip(curvature.curvature, jacobian_product(v),
                                               strict=True))
        hv = torch.autograd.grad(outputs, params, weighted, retain_graph=True,
                                 allow_unused=True, materialize_grads=True)
        return reduce(flat(hv).detach()) + damping * v

    def quadratic(v: Tensor) -> Tensor:
        jv = jacobian_product(v)
        form = total((m * t * t).sum() for m, t in zip(curvature.curvature, jv, strict=True))
        return reduce(form.detach()) + damping * v.dot(v)

    return matvec, quadratic


@dataclass
class TRPOStats:
    accepted: bool
    step_fraction: float  # the line search's accepted fraction of the full step (0 if none)
    kl: float
    loss_before: float
    loss_after: float


def trpo_step(params: Sequence[Tensor], loss_fn: Callable[[], Tensor],
              kl_fn: Callable[[], Tensor], max_kl: float = 0.01, cg_iters: int = 10,
              cg_damping: float = 1e-5, backtrack_ratio: float = 0.5,
              line_search_steps: int = 15,
              hessian_kl_fn: Callable[[], Tensor] | None = None,
              reduce: Callable[[Tensor], Tensor] = no_reduction,
              gauss_newton: GaussNewton | None = None,
              loss_and_kl: Callable[[], tuple[Tensor, Tensor]] | None = None,
              loss: Tensor | None = None) -> TRPOStats:
    """One TRPO update of ``params`` in place.

    The natural-gradient direction ``s = H^-1 g`` is scaled to the trust region's edge,
    ``sqrt(2 max_kl / s'Hs)``, and shrunk by ``backtrack_ratio`` until the surrogate loss improves
    and the KL stays within ``max_kl``; if no fraction qualifies, ``params`` are left as they were.
    ``hessian_kl_fn`` (a KL on a subsample of the data, cheaper) gives H; the line search always
    checks the full ``kl_fn``, so the bound holds exactly either way. ``gauss_newton`` (the same
    H in the Gauss-Newton form of that KL, cheaper) replaces the reverse-over-reverse Hessian of
    ``hessian_kl_fn or kl_fn`` in the conjugate gradient, and gives ``s'Hs`` from ``Js`` alone.
    ``loss_and_kl`` gives the line search both values from one evaluation (through the
    adaptation: half the work of the two closures). ``loss`` is ``loss_fn()`` if the caller has
    it already (computed on the outputs that ``gauss_newton`` shares). Under torchrun
    ``loss_fn`` and ``kl_fn`` give this rank's weighted share and ``reduce`` (an all-reduce sum)
    turns every gradient, Hessian-vector product and line-search value into the whole
    meta-batch's, so all ranks take the same step as one process would.
    """
    params = list(params)
    loss = loss_fn() if loss is None else loss
    # the Gauss-Newton product may go through the same outputs' graph: keep it
    grads = reduce(flat(torch.autograd.grad(loss, params, retain_graph=gauss_newton is not None)))
    loss_before = reduce(loss.detach()).item()
    del loss
    if gauss_newton is not None:
        matvec, quadratic = _gauss_newton_operator(gauss_newton, params, cg_damping, reduce)
    else:
        matvec, quadratic = _hessian_operator(hessian_kl_fn or kl_fn, params, cg_damping, reduce)
    direction = solve(matvec, -grads, cg_iters)
    shs = quadratic(direction).clamp_min(1e-12)
    full_step = direction * torch.sqrt(2.0 * max_kl / shs)
    del matvec, quadratic
    if loss_and_kl is None:
        def loss_and_kl() -> tuple[Tensor, Tensor]:
            return loss_fn(), kl_fn()
    return _line_search(params, full_step, loss_and_kl, loss_before, max_kl,
                        backtrack_ratio, line_search_steps, reduce)


def _line_search(params: list[Tensor], full_step: Tensor,
                 loss_and_kl: Callable[[], tuple[Tensor, Tensor]], loss_before: float,
                 max_kl: float, backtrack_ratio: float, line_search_steps: int,
                 reduce: Callable[[Tensor], Tensor]) -> TRPOStats:
    """Shrink the step until the surrogate improves within the trust region, or undo it."""
    old = [p.detach().clone() for p in params]
    fraction = 1.0
    with torch.no_grad():
        for _ in range(line_search_steps):
            for p, p_old, s in zip(params, old, unflat(full_step, params), strict=True):
                p.copy_(p_old + fraction * s)
            new_loss_tensor, kl_tensor = loss_and_kl()
            new_loss, kl = reduce(new_loss_tensor).item(), reduce(kl_tensor).item()
            if new_loss < loss_before and kl <= max_kl:
                return TRPOStats(True, fraction, kl, loss_before, new_loss)
            fraction *= backtrack_ratio
        for p, p_old in zip(params, old, strict=True):
            p.copy_(p_old)
    return TRPOStats(False, 0.0, 0.0, loss_before, loss_before)


__all__ = ["GaussNewton", "TRPOStats", "gauss_newton_vector_product", "hessian_vector_product",
           "no_reduction", "solve", "trpo_step"]
