"""TRPO's update: conjugate gradient on Fisher (KL Hessian) products, then a line search.

Pure functions over a flat parameter vector and closures, so the same code steps a plain policy
or the meta-parameters of MAML, where the loss and the KL are computed *through* the inner
adaptation (the Hessian-vector product then differentiates the inner gradient twice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mamlkit.functional.cg import conjugate_gradient


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for t in like:
        out.append(vector[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def solve(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
          tol: float = 1e-10) -> Tensor:
    """``A x = b`` for the flat vectors of TRPO, with the library's conjugate-gradient solver."""
    x = conjugate_gradient(lambda v: {"x": matvec(v["x"])}, {"x": b}, iters, tol=tol,
                           inner=lambda u, v: u["x"].dot(v["x"]))
    return x["x"].detach()


def same(tensor: Tensor) -> Tensor:
    """No reduction: one process holds the whole meta-batch."""
    return tensor


def hessian_vector_product(kl_fn: Callable[[], Tensor], params: Sequence[Tensor],
                           damping: float,
                           reduce: Callable[[Tensor], Tensor] = same
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
              reduce: Callable[[Tensor], Tensor] = same) -> TRPOStats:
    """One TRPO update of ``params`` in place.

    The natural-gradient direction ``s = H^-1 g`` is scaled to the trust region's edge,
    ``sqrt(2 max_kl / s'Hs)``, and shrunk by ``backtrack_ratio`` until the surrogate loss improves
    and the KL stays within ``max_kl``; if no fraction qualifies, ``params`` are left as they were.
    ``hessian_kl_fn`` (a KL on a subsample of the data, cheaper) gives H; the line search always
    checks the full ``kl_fn``, so the bound holds exactly either way. Under torchrun
    ``loss_fn`` and ``kl_fn`` give this rank's weighted share and ``reduce`` (an all-reduce sum)
    turns every gradient, Hessian-vector product and line-search value into the whole
    meta-batch's, so all ranks take the same step as one process would.
    """
    params = list(params)
    loss = loss_fn()
    grads = reduce(flat(torch.autograd.grad(loss, params)))
    loss_before = reduce(loss.detach()).item()
    matvec = hessian_vector_product(hessian_kl_fn or kl_fn, params, cg_damping, reduce)
    direction = solve(matvec, -grads, cg_iters)
    shs = direction.dot(matvec(direction)).clamp_min(1e-12)
    full_step = direction * torch.sqrt(2.0 * max_kl / shs)
    del matvec
    return _line_search(params, full_step, loss_fn, kl_fn, loss_before, max_kl,
                        backtrack_ratio, line_search_steps, reduce)


def _line_search(params: list[Tensor], full_step: Tensor, loss_fn: Callable[[], Tensor],
                 kl_fn: Callable[[], Tensor], loss_before: float, max_kl: float,
                 backtrack_ratio: float, line_search_steps: int,
                 reduce: Callable[[Tensor], Tensor]) -> TRPOStats:
    """Shrink the step until the surrogate improves within the trust region, or undo it."""
    old = [p.detach().clone() for p in params]
    fraction = 1.0
    with torch.no_grad():
        for _ in range(line_search_steps):
            for p, p_old, s in zip(params, old, unflat(full_step, params), strict=True):
                p.copy_(p_old + fraction * s)
            new_loss, kl = reduce(loss_fn()).item(), reduce(kl_fn()).item()
            if new_loss < loss_before and kl <= max_kl:
                return TRPOStats(True, fraction, kl, loss_before, new_loss)
            fraction *= backtrack_ratio
        for p, p_old in zip(params, old, strict=True):
            p.copy_(p_old)
    return TRPOStats(False, 0.0, 0.0, loss_before, loss_before)


__all__ = ["TRPOStats", "flat", "hessian_vector_product", "same", "solve", "trpo_step", "unflat"]
