"""The outer step of meta-RL: TRPO (as in the paper), PPO-clip or Adam on the meta-parameters.

Given closures, knowing no learner: ``distribution(k)`` returns the adapted policies' action
distribution ``(mean, std)`` on the query observations of this rank's first ``k`` tasks (all
for ``None``), differentiable in the meta-parameters ``params`` through the inner adaptation;
``query`` holds the query trajectories' actions, advantages and mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mamlkit.rl.losses import (
    RLData,
    gaussian_kl,
    gaussian_log_prob,
    masked_mean,
    ppo_clip_loss,
    surrogate_loss,
)
from mamlkit.rl.trpo import same, trpo_step

Distribution = Callable[[int | None], tuple[Tensor, Tensor]]
OUTER_STEPS = ("trpo", "ppo", "adam")


@dataclass(frozen=True)
class OuterSettings:
    """How the meta-parameters move: ``trpo`` (trust region ``max_kl``, ``cg_iters`` of
    conjugate gradient, ``cg_damping``, the KL Hessian from a ``cg_subsample`` fraction of the
    tasks), ``ppo`` (``ppo_clip``, ``ppo_epochs`` of the optimizer) or ``adam`` (one step)."""

    outer: str = "trpo"
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    cg_subsample: float = 1.0
    ppo_clip: float = 0.2
    ppo_epochs: int = 5


@dataclass
class OuterStats:
    loss: float
    kl: float = 0.0
    accepted: bool = True
    step_fraction: float = 1.0


@dataclass
class _Objective:
    """The surrogate and KL closures of one meta-batch (this rank's weighted share)."""

    distribution: Distribution
    query: RLData
    share: Tensor | float
    old_mean: Tensor
    old_std: Tensor
    old_log_probs: Tensor
    extra_loss: Callable[[], Tensor] | None

    def log_probs(self) -> tuple[Tensor, Tensor, Tensor]:
        mean, std = self.distribution(None)
        return gaussian_log_prob(mean, std, self.query.actions), mean, std

    def surrogate(self) -> Tensor:
        log_probs, _, _ = self.log_probs()
        q = self.query
        loss = surrogate_loss(log_probs, self.old_log_probs, q.advantages, q.mask) * self.share
        return loss + self.extra_loss() if self.extra_loss is not None else loss

    def ppo(self, clip: float) -> Tensor:
        log_probs, _, _ = self.log_probs()
        q = self.query
        loss = ppo_clip_loss(log_probs, self.old_log_probs, q.advantages, q.mask,
                             clip) * self.share
        return loss + self.extra_loss() if self.extra_loss is not None else loss

    def kl(self) -> Tensor:
        _, mean, std = self.log_probs()
        return masked_mean(gaussian_kl(self.old_mean, self.old_std, mean, std),
                           self.query.mask) * self.share


def outer_step(params: list[Tensor], distribution: Distribution, query: RLData,
               settings: OuterSettings, optimizer: torch.optim.Optimizer | None = None,
               extra_loss: Callable[[], Tensor] | None = None,
               reduce: Callable[[Tensor], Tensor] | None = None, world_size: int = 1,
               task_slice: slice | None = None, num_tasks: int | None = None) -> OuterStats:
    """Update ``params`` from one meta-batch with ``settings.outer``.

    ``extra_loss`` (the weighted meta-loss of supervised tasks in a mixed meta-batch) is added
    to the RL surrogate; TRPO takes it into its objective but not into its KL. Under torchrun
    ``query`` holds this rank's tasks and ``reduce`` sums over ranks: each rank's losses are
    weighted by its share of the meta-batch's valid time steps (``extra_loss``, the same on every
    rank, by ``1 / world_size``), which gives every rank the update of one process.
    ``task_slice`` and ``num_tasks`` say which tasks of the whole meta-batch this rank holds
    (for the KL Hessian's subsample).
    """
    total = same if reduce is None else reduce
    steps_here = query.mask.sum()
    share = 1.0 if reduce is None else steps_here / total(steps_here.clone())
    if extra_loss is not None and world_size > 1:
        full_extra = extra_loss

        def extra_loss() -> Tensor:
            return full_extra() / world_size
    with torch.no_grad():
        old_mean, old_std = distribution(None)
        old_log_probs = gaussian_log_prob(old_mean, old_std, query.actions)
    objective = _Objective(distribution, query, share, old_mean, old_std, old_log_probs,
                           extra_loss)
    if settings.outer == "trpo":
        kl_part = _hessian_kl(objective, params, settings, total, task_slice, num_tasks)
        stats = trpo_step(params, objective.surrogate, objective.kl, settings.max_kl,
                          settings.cg_iters, settings.cg_damping, hessian_kl_fn=kl_part,
                          reduce=total)
        return OuterStats(stats.loss_after, stats.kl, stats.accepted, stats.step_fraction)
    if optimizer is None:
        raise ValueError(f"The {settings.outer!r} outer step needs an optimizer.")
    if settings.outer == "adam":
        loss = objective.surrogate()
        _descend(loss, params, optimizer, reduce)
        return OuterStats(total(loss.detach()).item())
    if settings.outer == "ppo":
        for _ in range(settings.ppo_epochs):
            loss = objective.ppo(settings.ppo_clip)
            _descend(loss, params, optimizer, reduce)
        with torch.no_grad():
            final_kl = total(objective.kl()).item()
        return OuterStats(total(loss.detach()).item(), final_kl)
    raise ValueError(f"Unknown outer step {settings.outer!r}; choose trpo, ppo or adam.")


def _hessian_kl(objective: _Objective, params: list[Tensor], settings: OuterSettings,
                total: Callable[[Tensor], Tensor], task_slice: slice | None,
                num_tasks: int | None) -> Callable[[], Tensor] | None:
    """The KL of the meta-batch's first tasks only (tasks are drawn i.i.d.): an unbiased,
    cheaper H for TRPO; a rank holding tasks start.. of the meta-batch keeps those among the
    first. None when the whole meta-batch gives H."""
    mask = objective.query.mask
    here = mask.shape[0]
    whole = here if num_tasks is None else num_tasks
    start = 0 if task_slice is None else task_slice.start or 0
    whole_sub = max(1, round(settings.cg_subsample * whole))
    if whole_sub >= whole:
        return None
    sub = min(max(whole_sub - start, 0), here)
    part_steps = mask[:sub].sum()
    part_share = 1.0 if total is same else part_steps / total(part_steps.clone())

    def kl_part() -> Tensor:
        if sub == 0:  # none of this rank's tasks: a zero share that still joins the all-reduce
            return sum((p * p).sum() for p in params) * 0.0
        mean, std = objective.distribution(sub)
        return masked_mean(gaussian_kl(objective.old_mean[:sub], objective.old_std[:sub],
                                       mean, std), mask[:sub]) * part_share

    return kl_part


def _descend(loss: Tensor, params: list[Tensor], optimizer: torch.optim.Optimizer,
             reduce: Callable[[Tensor], Tensor] | None) -> None:
    """One optimizer step on ``loss``; under torchrun the ranks' weighted gradients summed."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if reduce is not None:
        for p in params:
            p.grad = reduce(p.grad if p.grad is not None else torch.zeros_like(p))
    optimizer.step()


__all__ = ["OUTER_STEPS", "OuterSettings", "OuterStats", "outer_step"]
