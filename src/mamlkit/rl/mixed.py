"""Mixed meta-batches: supervised imitation tasks (H = 1) beside RL tasks (H > 1), one policy.

An imitation task of 2D navigation is a goal with (state, expert action) pairs: its inner step
regresses the policy's mean on the expert's actions of the support pairs, its query loss is the
same regression on fresh pairs. RL tasks adapt from reward (``meta.py``). Each group is judged in
its own way and the meta-losses are summed with weights, so the shared initialisation learns from
demonstrations and from reward at once; at test time it adapts from reward alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mamlkit.rl.policy import call, policy_params

STATE_LOW, STATE_HIGH = -0.6, 0.6  # where demonstration states are drawn (goals lie in +-0.5)


@dataclass
class ImitationBatch:
    """Support and query pairs of each imitation task: states ``[T, K, obs]``, actions
    ``[T, K, act]``, and the goals ``[T, 2]`` they came from."""

    support_states: Tensor
    support_actions: Tensor
    query_states: Tensor
    query_actions: Tensor
    goals: Tensor


def sample_imitation(num_tasks: int, demonstrations: int, generator: torch.Generator,
                     action_scale: float = 0.1) -> ImitationBatch:
    """Navigation goals with expert demonstrations at uniformly drawn states.

    Actions are in units of the action limit, ``clip((goal - s) / 0.1, -1, 1)``: the environment
    clips the policy's actions to +-0.1, so this expert steps toward the goal at full speed, and
    targets of order one suit the inner learning rate of the RL tasks. (Regressing
    ``mean / 0.1`` on them instead is 100x stiffer: alpha = 0.1 diverged.)
    """
    from mamlkit.envs.navigation import expert_action, sample_goal_tasks

    tasks = sample_goal_tasks(num_tasks, generator)
    goals = torch.tensor([t["goal"] for t in tasks], dtype=torch.float32)
    states = torch.empty(num_tasks, 2 * demonstrations, 2).uniform_(STATE_LOW, STATE_HIGH,
                                                                    generator=generator)
    actions = expert_action(states, goals.unsqueeze(1)) / action_scale
    k = demonstrations
    return ImitationBatch(states[:, :k], actions[:, :k], states[:, k:], actions[:, k:], goals)


def imitation_loss(policy: nn.Module, params: Mapping[str, Tensor], states: Tensor,
                   actions: Tensor) -> Tensor:
    """Regression of the policy mean on the expert's actions, ``0.5 |(mean - a*) / sigma|^2``.

    This is the Gaussian negative log-likelihood of the expert's action with the standard
    deviation held constant: the same log-likelihood units as the policy-gradient loss of the
    RL tasks, so one inner learning rate suits both groups, and only the mean is regressed.
    """
    mean, std = call(policy, params, states)
    return (0.5 * ((mean - actions) / std.detach()).pow(2)).sum(-1).mean()


def imitation_meta_loss(policy: nn.Module, batch: ImitationBatch, inner_lr: float, steps: int,
                        first_order: bool, params: Mapping[str, Tensor] | None = None,
                        ) -> tuple[Tensor, Tensor]:
    """Query losses ``[T]`` after ``steps`` regression steps on the support pairs, and before."""
    params = dict(policy_params(policy) if params is None else params)

    def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
        adapted = params
        for _ in range(steps if inner_lr > 0 else 0):
            grads = torch.func.grad(lambda p: imitation_loss(policy, p, xs, ys))(adapted)
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            adapted = {n: adapted[n] - inner_lr * grads[n] for n in adapted}
        return imitation_loss(policy, adapted, xq, yq), imitation_loss(policy, params, xq, yq)

    return torch.func.vmap(one)(batch.support_states, batch.support_actions, batch.query_states,
                                batch.query_actions)
