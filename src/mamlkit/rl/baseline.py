"""The linear feature baseline of rllab (Duan et al. 2016), used by MAML's RL experiments.

Features ``[o, o^2, t, t^2, t^3, 1]`` with ``o`` clipped to [-10, 10] and ``t`` = time index /
100, fitted per task by ridge least squares on that task's discounted returns. The ridge
coefficient starts at ``reg`` and is raised x10 for the tasks whose solve is not finite, as in the
reference code. All tasks are solved in one batched ``torch.linalg`` call (float64: the cubic time
features make the normal equations badly conditioned in float32).

``cross_fit`` fits each half of a task's trajectories on the other half. Fitted in sample, the
baseline of an episode depends on that episode's own return and absorbs part of it (with 2 x 105
+ 4 features for the ant and a few hundred live steps, a large part): the advantages shrink
towards zero and the policy gradient is biased. Cross-fitted, an episode's baseline is
independent of its own actions, so the gradient stays unbiased at the price of fitting on half
the data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamlkit.rl.episodes import Episodes
from mamlkit.rl.returns import discounted_returns
from mamlkit.rl.threads import one_torch_thread


def baseline_features(observations: Tensor, mask: Tensor) -> Tensor:
    """``[o, o^2, t, t^2, t^3, 1]`` per step, ``[T, N, H, 2 * obs_dim + 4]``, zero where masked."""
    o = observations.clamp(-10.0, 10.0)
    horizon = observations.shape[-2]
    t = torch.arange(horizon, dtype=o.dtype, device=o.device) / 100.0
    t = t.view(*([1] * (o.dim() - 2)), horizon, 1).expand(*o.shape[:-1], 1)
    ones = torch.ones_like(t)
    features = torch.cat([o, o * o, t, t * t, t * t * t, ones], dim=-1)
    return features * mask.unsqueeze(-1)


def fit_linear(features: Tensor, targets: Tensor, reg: float = 1e-5,
               attempts: int = 10) -> Tensor:
    """Ridge coefficients per task: ``features [T, M, F]``, ``targets [T, M]`` -> ``[T, F]``.

    Solves ``(X^T X + reg I) w = X^T y`` for all tasks at once; tasks whose solution is not
    finite are solved again with ``reg`` x10 (up to ``attempts`` times; from 1e-8 if ``reg`` is
    0). Tasks that never give a finite solution keep zero coefficients (a zero baseline).
    """
    x = features.double()
    y = targets.double()
    gram = x.transpose(-1, -2) @ x
    rhs = (x.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    coeffs = torch.zeros_like(rhs)
    todo = torch.arange(x.shape[0], device=x.device)
    coeff = reg
    for _ in range(attempts):
        with one_torch_thread():  # MKL's threaded batched LU fails at ~200 unknowns (rl.threads)
            solution, info = torch.linalg.solve_ex(gram[todo] + coeff * eye, rhs[todo])
        ok = (info == 0) & torch.isfinite(solution).all(-1)
        coeffs[todo[ok]] = solution[ok]
        todo = todo[~ok]
        if todo.numel() == 0:
            break
        coeff = max(coeff * 10.0, 1e-8)
    return coeffs


def linear_baseline(episodes: Episodes, discount: float, reg: float = 1e-5,
                    cross_fit: bool = False) -> Tensor:
    """Baseline values ``[T, N, H]`` fitted per task to its discounted returns (0 where masked);
    ``cross_fit``: trajectories ``[:N // 2]`` from a fit on ``[N // 2:]`` and the reverse."""
    t, n, h = episodes.rewards.shape
    features = baseline_features(episodes.observations, episodes.mask)
    targets = discounted_returns(episodes.rewards, episodes.mask, discount)
    if cross_fit and n >= 2:
        halves = (slice(0, n // 2), slice(n // 2, n))
        values = torch.cat([_fitted_values(features[:, apply_to], features[:, fit_on],
                                           targets[:, fit_on], reg)
                            for apply_to, fit_on in (halves, halves[::-1])], dim=1)
    else:
        values = _fitted_values(features, features, targets, reg)
    return values.to(episodes.rewards.dtype) * episodes.mask


def _fitted_values(apply_to: Tensor, fit_on: Tensor, targets: Tensor, reg: float) -> Tensor:
    """Values on ``apply_to`` ``[T, n, H, F]`` of per-task ridge fits on ``fit_on``/``targets``."""
    t, features = fit_on.shape[0], fit_on.shape[-1]
    coeffs = fit_linear(fit_on.reshape(t, -1, features), targets.reshape(t, -1), reg)
    flat = apply_to.reshape(t, -1, features).double()
    return (flat @ coeffs.unsqueeze(-1)).squeeze(-1).reshape(apply_to.shape[:-1])
