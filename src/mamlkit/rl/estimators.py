"""Inner losses of RL tasks that differ only in their second derivative: the meta-gradient
estimators of the pre-update sampling term.

The support trajectories are sampled with theta, so the expected post-adaptation return
``E_{tau ~ pi_theta}[R(theta'(theta, tau))]`` depends on theta also through the sampling
distribution. The meta-gradient reaches the inner loss only through its gradient ``g(theta)``
(``theta' = theta - alpha g``), so what an estimator changes is the Jacobian ``dg/dtheta``:

- ``maml``: REINFORCE ``-mean(log pi(a_t|s_t) A_t)``; its Hessian ``-mean(grad^2 log pi A)``
  holds the trajectories fixed and leaves the sampling term out.
- ``dice``: DiCE (Foerster et al. 2018), the magic box ``exp(c_t - stopgrad(c_t))`` of the
  cumulative log-probability ``c_t = sum_{t'<=t} log pi_t'`` on per-step weights
  ``A_t - A_{t+1}`` (so the first derivative is REINFORCE's exactly). Its Hessian adds
  ``-mean(sum_{t,t'} s_t s_t'^T A_max(t,t'))`` with ``s_t = grad log pi_t``: unbiased for the
  sampling term, with the cross-time products' variance.
- ``lvc``: ProMP's low-variance curvature estimator (Rothfuss et al. 2019), the per-step
  likelihood ratio ``pi(a_t|s_t) / stopgrad(pi(a_t|s_t))`` times ``A_t``: the diagonal
  ``t = t'`` of DiCE's sampling term only (biased, much lower variance).

All three have the same value and the same gradient, so sampling, evaluation and first-order
meta-learning (which holds ``g`` constant) are identical under every estimator; they differ only
in second-order meta-gradients. Each takes one task's ``RLData`` (no task dimension).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamlkit.functional.task_loss import TaskLoss
from mamlkit.rl.losses import VPGLoss, masked_mean

ESTIMATORS = ("maml", "dice", "lvc")


def magic_box(log_probs: Tensor) -> Tensor:
    """DiCE's operator: 1 in value, ``x * grad(log_probs)`` under differentiation."""
    return torch.exp(log_probs - log_probs.detach())


def per_step_weights(advantages: Tensor, mask: Tensor) -> Tensor:
    """``w_t = A_t - A_{t+1}`` over valid steps, so that ``sum_{t >= t'} w_t = A_t'``: the
    rewards whose DiCE objective has REINFORCE-with-advantages as its gradient."""
    masked = advantages.detach() * mask
    following = torch.cat([masked[..., 1:], torch.zeros_like(masked[..., :1])], dim=-1)
    return masked - following


def dice_loss(log_probs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """``-sum(magic_box(c_t) w_t) / steps`` with ``c_t`` the cumulative log-probability over
    each trajectory's valid steps (the mean normalisation of ``vpg_loss``)."""
    cumulative = torch.cumsum(log_probs * mask, dim=-1)
    weighted = magic_box(cumulative) * per_step_weights(advantages, mask)
    return -(weighted * mask).sum() / mask.sum().clamp_min(1.0)


def lvc_loss(log_probs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """``-mean(pi_t / stopgrad(pi_t) * A_t)``: ProMP's inner objective."""
    return -masked_mean(magic_box(log_probs) * advantages.detach(), mask)


class DiCELoss(VPGLoss):
    """The inner loss of an RL task under the ``dice`` estimator (Gaussian policy module)."""

    objective = staticmethod(dice_loss)


class LVCLoss(VPGLoss):
    """The inner loss of an RL task under the ``lvc`` estimator (Gaussian policy module)."""

    objective = staticmethod(lvc_loss)


def inner_loss(estimator: str) -> TaskLoss:
    """The RL task's inner loss for ``estimator`` (maml | dice | lvc)."""
    losses = {"maml": VPGLoss, "dice": DiCELoss, "lvc": LVCLoss}
    if estimator not in losses:
        raise ValueError(f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")
    return losses[estimator]()


__all__ = ["ESTIMATORS", "DiCELoss", "LVCLoss", "dice_loss", "inner_loss", "lvc_loss",
           "magic_box", "per_step_weights"]
