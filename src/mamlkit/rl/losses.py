"""Policy-gradient losses over masked ``[..., N, H]`` batches of trajectories, and the task
losses of RL (H > 1) and imitation tasks for the functional core's inner step.

All losses are means over valid time steps (``mask`` is 1 before an episode ends, 0 after), so
they work for one task (``[N, H]``) under ``vmap`` as well as for a stack of tasks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from mamlkit.functional.task_loss import TaskLoss, forward

LOG_2PI = math.log(2 * math.pi)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def gaussian_log_prob(mean: Tensor, std: Tensor, actions: Tensor) -> Tensor:
    """Log density of ``actions`` under a diagonal Gaussian, summed over the last dimension."""
    z = (actions - mean) / std
    return (-0.5 * z.pow(2) - torch.log(std) - 0.5 * LOG_2PI).sum(-1)


def gaussian_kl(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last dimension."""
    var_p, var_q = std_p.pow(2), std_q.pow(2)
    kl = torch.log(std_q / std_p) + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5
    return kl.sum(-1)


def gaussian_kl_curvature(std: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """The second derivatives of ``sum(weights * gaussian_kl(p, q))`` in q's mean and std at
    ``q = p``, per element: ``w / std^2`` and ``2 w / std^2`` (the mixed ones are zero there).

    ``weights`` are per time step (``[..., N, H]``), ``std`` per action dimension. With them the
    KL's Hessian at the old policy is ``J^T M J`` (``rl/trpo.py::GaussNewton``)."""
    per_step = weights.unsqueeze(-1) / std.pow(2)
    return per_step, 2 * per_step


def masked_mean_weights(mask: Tensor) -> Tensor:
    """The weights that ``masked_mean(values, mask)`` gives each element of ``values``."""
    return mask / mask.sum().clamp_min(1.0)


def vpg_loss(log_probs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE with a baseline: ``-mean(log pi(a|s) * A)``; its gradient is the policy gradient.

    ``advantages`` are constants (detached): they come from the sampled rewards and the baseline.
    """
    return -masked_mean(log_probs * advantages.detach(), mask)


def surrogate_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor,
                   mask: Tensor) -> Tensor:
    """TRPO's importance-weighted surrogate ``-mean(pi/pi_old * A)``; equals VPG's gradient at
    ``pi = pi_old`` and lets the line search judge a step without new samples."""
    ratio = torch.exp(log_probs - old_log_probs.detach())
    return -masked_mean(ratio * advantages.detach(), mask)


def ppo_clip_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor,
                  clip: float = 0.2) -> Tensor:
    """PPO's pessimistic surrogate: ``-mean(min(r A, clip(r, 1-eps, 1+eps) A))``."""
    ratio = torch.exp(log_probs - old_log_probs.detach())
    advantages = advantages.detach()
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return -masked_mean(torch.minimum(ratio * advantages, clipped), mask)


class RLData(NamedTuple):
    """What the losses need from a group of trajectories: ``observations [.., N, H, obs]``,
    ``actions``, ``advantages [.., N, H]`` (constants) and ``mask``. A NamedTuple, so that it
    is a pytree that ``vmap`` and ``TaskBatch`` slice over tasks."""

    observations: Tensor
    actions: Tensor
    advantages: Tensor
    mask: Tensor


class VPGLoss(TaskLoss):
    """The inner loss of an RL task: REINFORCE with a baseline on its support trajectories.

    For a Gaussian policy module ``obs -> (mean, std)``; one task's ``RLData``, no task dim.
    ``objective(log_probs, advantages, mask)`` is the estimator (``rl/estimators.py`` holds
    ones with the same value and gradient and other second derivatives).
    """

    objective = staticmethod(vpg_loss)

    def __call__(self, model, params, buffers, data: RLData) -> Tensor:
        mean, std = forward(model, params, buffers, data.observations)
        log_probs = gaussian_log_prob(mean, std, data.actions)
        return self.objective(log_probs, data.advantages, data.mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ImitationLoss(TaskLoss):
    """Regression of a Gaussian policy's mean on expert actions, ``0.5 |(mean - a*) / std|^2``.

    The Gaussian negative log-likelihood of the expert's action with the standard deviation
    held constant: the same log-likelihood units as the policy-gradient loss of RL tasks, so one
    inner learning rate suits both kinds of task in a mixed meta-batch, and only the mean is
    regressed. Data: ``(states [K, obs], expert actions [K, act])``.
    """

    def __call__(self, model, params, buffers, data) -> Tensor:
        states, actions = data
        mean, std = forward(model, params, buffers, states)
        return (0.5 * ((mean - actions) / std.detach()).pow(2)).sum(-1).mean()

    def __repr__(self) -> str:
        return "ImitationLoss()"
