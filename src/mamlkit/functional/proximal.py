"""Implicit MAML's inner problem, solved: phi* = argmin_phi L_s(phi) + lam/2 ||phi - theta||^2.

The implicit meta-gradient ``(I + H_s/lam)^-1 grad L_q(phi)`` is the gradient of
``L_q(phi*(theta))`` only where ``phi`` is the proximal optimum, so the inner solver decides
whether iMAML computes what it claims. Two solvers, each a sequence of iterates
``phi_0 = theta, phi_1, ...`` (one per inner step):

- ``gd``: gradient steps of ``inner_lr`` on the proximal objective, optionally with each step's
  gradient norm clipped. A fixed step stalls or diverges once the support-loss curvature grows
  past ``2 / inner_lr``, which meta-training on sinusoid reached.
- ``lbfgs`` (Rajeswaran et al. 2019 solve it with a few steps of a good optimiser):
  limited-memory BFGS with a backtracking (Armijo) line search, its first direction the plain
  step ``-inner_lr * grad``. Converges on the ill-conditioned problems where ``gd`` does not.

Both stop moving once the proximal gradient norm is at most ``tol``; ``lbfgs`` also once its
line search finds no decrease (the optimum to rounding precision, about 1e-8 in float64 and
1e-3 in float32, or a kink of a ReLU net, where the gradient norm need not vanish). By default
there are no data-dependent Python branches (choices are ``torch.where``), so they run under
``vmap``: the line search tries all its step lengths in one batched call and a frozen iterate
still costs its gradient. ``eager`` solvers (one task at a time, as ``loop`` batching and
``adapt`` run them) take the same iterates with Python branches instead: trial steps one at a
time until one is accepted (usually the first), and no work once the iterate has frozen. On
Omniglot's Conv4 that halves iMAML's training time (a batch of trial weights under ``vmap`` is a
grouped convolution per trial).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from mamlkit.functional.adapt import BoundLoss, InnerLR, Params, scalar_step_size
from mamlkit.functional.cg import total
from mamlkit.functional.flat import flat, unflat

SOLVERS = ("lbfgs", "gd")
LINE_SEARCH = torch.tensor([2.0 ** -j for j in range(16)])  # trial step lengths: 1, 1/2 .. 2^-15
ARMIJO = 1e-4  # sufficient decrease: F(x + t d) <= F(x) + ARMIJO * t * grad.d


def flatten(params: Mapping[str, Tensor]) -> Tensor:
    return flat(params.values())


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Params:
    return dict(zip(like, unflat(vector, list(like.values())), strict=True))


@dataclass(frozen=True)
class ProximalSolver:
    """How the inner loop of iMAML approaches phi*: ``kind`` (``lbfgs`` | ``gd``), the step
    size (``gd``'s step; ``lbfgs``'s first step), the proximal strength ``lam``, the gradient-norm
    tolerance ``tol`` at which iterates freeze and the ``history`` of curvature pairs ``lbfgs``
    keeps. ``max_grad_norm`` clips each ``gd`` step's gradient norm and bounds each ``lbfgs``
    direction to the same length (``inner_lr * max_grad_norm``). ``eager``: the same iterates
    with data-dependent branches (not under ``vmap``; see the module docstring)."""

    kind: str
    inner_lr: InnerLR
    lam: float
    tol: float = 0.0
    max_grad_norm: float | None = None
    history: int = 10
    eager: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SOLVERS:
            raise ValueError(f"Unknown iMAML inner solver {self.kind!r}; choose "
                             f"{' or '.join(SOLVERS)}.")
        if self.lam <= 0 or self.tol < 0 or self.history < 1:
            raise ValueError("The proximal solver needs lam > 0, tol >= 0 and history >= 1; got "
                             f"{self.lam}, {self.tol}, {self.history}.")

    def iterates(self, loss: BoundLoss, theta: Mapping[str, Tensor], support: Any,
                 steps: int) -> Iterator[Params]:
        """``phi_0 = theta`` (detached), then the iterate after each of ``steps`` steps."""
        theta = {n: t.detach() for n, t in theta.items()}
        walk = _lbfgs if self.kind == "lbfgs" else _gd
        yield from walk(self, loss, theta, support, steps)

    def solve(self, loss: BoundLoss, theta: Mapping[str, Tensor], support: Any,
              steps: int) -> Params:
        """The last iterate: the approximate proximal optimum phi*."""
        *_, last = self.iterates(loss, theta, support, steps)
        return last


def proximal_grad(loss: BoundLoss, phi: Mapping[str, Tensor], theta: Mapping[str, Tensor],
                  support: Any, lam: float) -> tuple[Params, Tensor]:
    """Gradient and value of ``F(phi) = L_s(phi) + lam/2 ||phi - theta||^2``."""
    def objective(p: Params) -> Tensor:
        return loss(p, support) + lam / 2 * sum(((p[n] - theta[n]) ** 2).sum() for n in p)

    return torch.func.grad_and_value(objective)(dict(phi))


def _gd(solver: ProximalSolver, loss: BoundLoss, theta: Params, support: Any,
        steps: int) -> Iterator[Params]:
    phi = dict(theta)
    yield phi
    for step in range(steps):
        grads, _ = proximal_grad(loss, phi, theta, support, solver.lam)
        norm = torch.sqrt(total((g * g).sum() for g in grads.values()))
        if solver.eager and not norm > solver.tol:  # converged: stay, without more gradients
            for _ in range(step, steps):
                yield phi
            return
        scale = (norm > solver.tol).to(norm.dtype)  # converged: stay
        if solver.max_grad_norm is not None:
            scale = scale * torch.clamp(solver.max_grad_norm / (norm + 1e-12), max=1.0)
        lr = _rate(solver, step)
        phi = {n: phi[n] - lr * scale * grads[n] for n in phi}
        yield phi


def _lbfgs(solver: ProximalSolver, loss: BoundLoss, theta: Params, support: Any,
           steps: int) -> Iterator[Params]:
    x0 = flatten(theta)
    lam = solver.lam

    def objective(x: Tensor, data: Any) -> Tensor:
        return loss(unflatten(x, theta), data) + lam / 2 * ((x - x0) ** 2).sum()

    def value(x: Tensor) -> Tensor:
        return objective(x, support)

    def values(xs: Tensor) -> Tensor:
        """``value`` at each row of ``xs`` in one call; the data is expanded to the rows too
        (mse_loss under a nested vmap fails unless every input is batched alike)."""
        data = pytree.tree_map(lambda t: t.expand(len(xs), *t.shape)
                               if isinstance(t, Tensor) else t, support)
        return torch.func.vmap(objective)(xs, data)

    x, (g, f) = x0, _flat_grad(value, x0)
    s_hist = torch.zeros(solver.history, x.numel(), dtype=x.dtype, device=x.device)
    y_hist, rho = torch.zeros_like(s_hist), torch.zeros(solver.history, dtype=x.dtype,
                                                          device=x.device)
    gamma = torch.ones((), dtype=x.dtype, device=x.device) * float(_rate(solver, 0))
    moving = torch.ones((), dtype=torch.bool, device=x.device)
    yield unflatten(x, theta)
    for k in range(steps):
        first = solver.history - min(k, solver.history)  # slots before it hold no pair yet
        d = -_two_loop(g, s_hist[first:], y_hist[first:], rho[first:], gamma)
        d = torch.where(torch.dot(g, d) < 0, d, -gamma * g)  # not downhill (rounding): steepest
        if solver.max_grad_norm is not None:  # at most as long as the longest clipped gd step
            bound = float(_rate(solver, 0)) * solver.max_grad_norm
            d = d * torch.clamp(bound / (torch.linalg.vector_norm(d) + 1e-12), max=1.0)
        unconverged = torch.linalg.vector_norm(g) > solver.tol
        if solver.eager:
            t = _armijo_sequential(value, x, f, g, d) if unconverged else torch.zeros_like(f)
            if not t > 0:  # frozen: the remaining iterates are this one, at no cost
                for _ in range(k, steps):
                    yield unflatten(x, theta)
                return
        else:
            t = torch.where(moving & unconverged, _armijo(values, x, f, g, d), 0)
            moving = t > 0  # no decrease left to find (rounding level): stay
        x_new = x + t * d
        g_new, f_new = _flat_grad(value, x_new)
        s, y = x_new - x, g_new - g
        sy = torch.dot(s, y)
        keep = sy > 1e-10 * torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)
        s_hist = torch.where(keep, torch.cat([s_hist[1:], s[None]]), s_hist)
        y_hist = torch.where(keep, torch.cat([y_hist[1:], y[None]]), y_hist)
        rho = torch.where(keep, torch.cat([rho[1:], (1 / torch.where(keep, sy, 1))[None]]), rho)
        gamma = torch.where(keep, sy / torch.where(keep, torch.dot(y, y), 1), gamma)
        x, g, f = x_new, g_new, f_new
        yield unflatten(x, theta)


def _rate(solver: ProximalSolver, step: int) -> float | Tensor:
    return scalar_step_size(solver.inner_lr, step, "The proximal solver")


def _flat_grad(value: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    grad_value: tuple[Tensor, Tensor] = torch.func.grad_and_value(value)(x)
    return grad_value


def _two_loop(g: Tensor, s_hist: Tensor, y_hist: Tensor, rho: Tensor, gamma: Tensor) -> Tensor:
    """The L-BFGS inverse-Hessian approximation times ``g`` (empty slots have rho = 0)."""
    q, alphas = g, []
    for i in reversed(range(len(rho))):
        alpha = rho[i] * torch.dot(s_hist[i], q)
        q = q - alpha * y_hist[i]
        alphas.append(alpha)
    r = gamma * q
    for i, alpha in zip(range(len(rho)), reversed(alphas), strict=True):
        beta = rho[i] * torch.dot(y_hist[i], r)
        r = r + (alpha - beta) * s_hist[i]
    return r


def _armijo(values: Callable[[Tensor], Tensor], x: Tensor, f: Tensor, g: Tensor,
            d: Tensor) -> Tensor:
    """The longest trial step with sufficient (and strict) decrease, all trials in one batched
    call; no step (t = 0) if none qualifies."""
    trials = LINE_SEARCH.to(dtype=x.dtype, device=x.device)
    tried = values(x + trials[:, None] * d)
    slope = torch.dot(g, d)
    ok = (tried < f + ARMIJO * trials * slope) & (slope < 0)
    first = ok & (torch.cumsum(ok.int(), 0) == 1)
    return torch.where(first, trials, 0).sum()


def _armijo_sequential(value: Callable[[Tensor], Tensor], x: Tensor, f: Tensor, g: Tensor,
                       d: Tensor) -> Tensor:
    """``_armijo``'s step, found by trying the step lengths in order and stopping at the first
    that qualifies (one evaluation when the full step is accepted, as it usually is)."""
    slope = torch.dot(g, d)
    if slope < 0:
        trials: list[Tensor] = list(LINE_SEARCH.to(dtype=x.dtype, device=x.device))
        for t in trials:
            if value(x + t * d) < f + ARMIJO * t * slope:
                return t
    return torch.zeros_like(f)


__all__ = ["SOLVERS", "ProximalSolver", "flatten", "proximal_grad", "unflatten"]
