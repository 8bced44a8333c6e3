"""Discounted reward-to-go, generalised advantage estimation and advantage normalisation.

All functions take ``[..., H]`` tensors (usually ``[tasks, trajectories, horizon]``) and a mask
that is 1.0 while the episode is alive; masked steps contribute nothing and get 0 back. A
backward loop over H (100-200 steps) of whole-batch tensor operations is cheap next to sampling.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, mask: Tensor, discount: float) -> Tensor:
    """``R_t = sum_{k >= t} discount^(k - t) r_k`` over the valid steps, ``[..., H]``."""
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + discount * running * mask[..., t]
        out[..., t] = running
    return out * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, discount: float,
        gae_lambda: float) -> Tensor:
    """Generalised advantage estimation (Schulman et al. 2016), ``[..., H]``.

    ``delta_t = r_t + discount * V_{t+1} - V_t`` with ``V_{t+1} = 0`` after the last valid step
    (episodes end at the horizon or at termination), and
    ``A_t = sum_k (discount * gae_lambda)^k delta_{t+k}``. ``gae_lambda = 1`` gives discounted
    returns minus values; ``gae_lambda = 0`` gives the one-step TD error.
    """
    rewards = rewards * mask
    values = values * mask
    next_values = torch.zeros_like(values)
    next_values[..., :-1] = values[..., 1:]
    deltas = (rewards + discount * next_values - values) * mask
    out = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[..., 0])
    for t in range(deltas.shape[-1] - 1, -1, -1):
        running = deltas[..., t] + discount * gae_lambda * running * mask[..., t]
        out[..., t] = running
    return out * mask


def normalize(advantages: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit standard deviation per task (dim 0) over its valid steps; masked steps 0.

    Per task rather than over the meta-batch, because tasks' reward scales differ and each
    task's inner step should not be dominated by another task's scale.
    """
    dims = tuple(range(1, advantages.dim()))
    count = mask.sum(dims, keepdim=True).clamp_min(1.0)
    mean = (advantages * mask).sum(dims, keepdim=True) / count
    var = (((advantages - mean) * mask) ** 2).sum(dims, keepdim=True) / count
    return (advantages - mean) / (var.sqrt() + eps) * mask
