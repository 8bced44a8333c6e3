"""One conjugate-gradient solver for the library: iMAML's implicit gradient and TRPO's step.

Vectors are dicts of tensors (a flat vector is ``{"x": v}``), so the solver runs on parameter
dicts directly and, having no data-dependent Python branches, under ``vmap`` over tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import cast

import torch
from torch import Tensor

Vector = dict[str, Tensor]


def total(terms: Iterable[Tensor]) -> Tensor:
    """``sum(terms)`` as Python adds them (from 0, which leaves the first term as it is)."""
    return cast(Tensor, sum(terms))  # 0 + a tensor is a tensor; typeshed says int | Tensor


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return total((a[n] * b[n]).sum() for n in a)


def conjugate_gradient(matvec: Callable[[Vector], Vector], b: Mapping[str, Tensor], steps: int,
                       min_curvature: float = 0.0, tol: float = 0.0,
                       inner: Callable[[Vector, Vector], Tensor] = dot) -> Vector:
    """Approximately solve ``A x = b`` for symmetric ``A`` given as ``matvec``, from ``x = 0``.

    Stops (freezes ``x``) once the residual ``r.r`` falls below ``tol``, and, as in Newton-CG,
    once a search direction ``p`` has curvature ``p.Ap <= min_curvature * p.p``: for iMAML's
    ``A = I + H/lam`` that happens where a network's Hessian has eigenvalues near or below
    ``-lam`` (A is then not positive definite); without the stop, one such task sent the
    meta-gradient to infinity in our sinusoid runs. Stopped at the first step it returns ``b``
    (the first-order answer). ``inner`` is the inner product (TRPO: ``torch.dot`` of flat
    vectors).
    """
    x = {n: torch.zeros_like(t) for n, t in b.items()}
    r = dict(b)
    p = dict(b)
    rr = inner(r, r)
    active = rr >= tol
    first = active
    for step in range(steps):
        ap = matvec(p)
        pap = inner(p, ap)
        active = active & (rr >= tol) & (pap > min_curvature * inner(p, p))
        if step == 0:
            first = active
        alpha = torch.where(active, rr / torch.where(active, pap, 1), 0)
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rr_new = inner(r, r)
        beta = torch.where(rr != 0, rr_new / torch.where(rr != 0, rr, 1), 0)
        p = {n: r[n] + beta * p[n] for n in p}
        rr = rr_new
    # stopped at once: fall back to b itself, the first-order answer (as Newton-CG does)
    return {n: torch.where(first, x[n], b[n]) for n in x}


__all__ = ["conjugate_gradient", "dot"]
