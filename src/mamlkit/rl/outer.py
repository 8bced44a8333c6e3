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

from mamlkit.functional.cg import total as cg_total
from mamlkit.rl.losses import (
    RLData,
    gaussian_kl,
    gaussian_kl_curvature,
    gaussian_log_prob,
    masked_mean,
    masked_mean_weights,
    ppo_clip_loss,
    surrogate_loss,
)
from mamlkit.rl.trpo import GaussNewton, no_reduction, trpo_step

Distribution = Callable[[int | None], tuple[Tensor, Tensor]]
OUTER_STEPS = ("trpo", "ppo", "adam")
FISHER_PRODUCTS = ("gauss_newton", "hessian")


@dataclass(frozen=True)
class OuterSettings:
    """How the meta-parameters move: ``trpo`` (trust region ``max_kl``, ``cg_iters`` of
    conjugate gradient, ``cg_damping``, the KL Hessian from a ``cg_subsample`` fraction of the
    tasks, its products in ``fisher_product`` form: ``gauss_newton`` J^T M J, or ``hessian``, the
    KL's Hessian by reverse-over-reverse; the same matrix, the first a third fewer FLOPs),
    ``ppo`` (``ppo_clip``, ``ppo_epochs`` of the optimizer) or ``adam`` (one step)."""

    outer: str = "trpo"
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    cg_subsample: float = 1.0
    fisher_product: str = "gauss_newton"
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
        return self._surrogate(*self.log_probs())

    def surrogate_at(self, mean: Tensor, std: Tensor) -> Tensor:
        """The surrogate of outputs already computed through the adaptation."""
        return self._surrogate(gaussian_log_prob(mean, std, self.query.actions), mean, std)

    def _surrogate(self, log_probs: Tensor, mean: Tensor, std: Tensor) -> Tensor:
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
        return self._kl(*self.log_probs())

    def _kl(self, log_probs: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        return masked_mean(gaussian_kl(self.old_mean, self.old_std, mean, std),
                           self.query.mask) * self.share

    def surrogate_and_kl(self) -> tuple[Tensor, Tensor]:
        """Both from one pass through the adaptation (the line search needs both)."""
        outputs = self.log_probs()
        return self._surrogate(*outputs), self._kl(*outputs)


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
    total = no_reduction if reduce is None else reduce
    steps_here = query.mask.sum()
    share = 1.0 if reduce is None else steps_here / total(steps_here.clone())
    if extra_loss is not None and world_size > 1:
        full_extra = extra_loss

        def extra_loss() -> Tensor:
            return full_extra() / world_size
    if settings.outer == "trpo" and settings.fisher_product not in FISHER_PRODUCTS:
        raise ValueError(f"Unknown fisher_product {settings.fisher_product!r}; choose "
                         f"{' or '.join(FISHER_PRODUCTS)}.")
    subsample = (_subsample(query.mask, share, settings, total, task_slice, num_tasks)
                 if settings.outer == "trpo" else None)
    outputs = None
    if (subsample is not None and subsample.tasks is None
            and settings.fisher_product == "gauss_newton"):
        # one pass through the adaptation gives the old policy, the surrogate's graph and H's
        outputs = tuple(distribution(None))
        old_mean, old_std = (o.detach() for o in outputs)
    else:
        with torch.no_grad():
            old_mean, old_std = distribution(None)
    with torch.no_grad():
        old_log_probs = gaussian_log_prob(old_mean, old_std, query.actions)
    objective = _Objective(distribution, query, share, old_mean, old_std, old_log_probs,
                           extra_loss)
    if subsample is not None:  # trpo
        gauss_newton = kl_part = loss_at_old = None
        if settings.fisher_product == "gauss_newton":
            gauss_newton = _kl_gauss_newton(objective, subsample, outputs)
            loss_at_old = None if outputs is None else objective.surrogate_at(*outputs)
        else:
            kl_part = _hessian_kl(objective, params, subsample)
        stats = trpo_step(params, objective.surrogate, objective.kl, settings.max_kl,
                          settings.cg_iters, settings.cg_damping, hessian_kl_fn=kl_part,
                          reduce=total, gauss_newton=gauss_newton,
                          loss_and_kl=objective.surrogate_and_kl, loss=loss_at_old)
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


@dataclass(frozen=True)
class _Subsample:
    """This rank's first ``tasks`` tasks and their weight in the KL that gives H (None: all
    tasks, the objective's own share)."""

    tasks: int | None
    share: Tensor | float


def _subsample(mask: Tensor, share: Tensor | float, settings: OuterSettings,
               total: Callable[[Tensor], Tensor], task_slice: slice | None,
               num_tasks: int | None) -> _Subsample:
    """The KL of the meta-batch's first tasks only (tasks are drawn i.i.d.): an unbiased,
    cheaper H for TRPO; a rank holding tasks start.. of the meta-batch keeps those among the
    first. All tasks (``share``, the objective's) when ``cg_subsample`` keeps them all."""
    here = mask.shape[0]
    whole = here if num_tasks is None else num_tasks
    start = 0 if task_slice is None else task_slice.start or 0
    whole_sub = max(1, round(settings.cg_subsample * whole))
    if whole_sub >= whole:
        return _Subsample(None, share)
    sub = min(max(whole_sub - start, 0), here)
    part_steps = mask[:sub].sum()
    return _Subsample(sub, 1.0 if total is no_reduction else part_steps / total(part_steps.clone()))


def _hessian_kl(objective: _Objective, params: list[Tensor],
                subsample: _Subsample) -> Callable[[], Tensor] | None:
    """The subsample's KL, whose Hessian the products differentiate; None for all tasks (the
    objective's own KL)."""
    sub, mask = subsample.tasks, objective.query.mask
    if sub is None:
        return None

    def kl_part() -> Tensor:
        if sub == 0:  # none of this rank's tasks: a zero share that still joins the all-reduce
            return cg_total((p * p).sum() for p in params) * 0.0
        mean, std = objective.distribution(sub)
        return masked_mean(gaussian_kl(objective.old_mean[:sub], objective.old_std[:sub],
                                       mean, std), mask[:sub]) * subsample.share

    return kl_part


def _kl_gauss_newton(objective: _Objective, subsample: _Subsample,
                     computed: tuple[Tensor, ...] | None = None) -> GaussNewton:
    """The same H as ``_hessian_kl``'s KL (or the objective's) in Gauss-Newton form: the
    adapted policies' (mean, std) through the adaptation (``computed``: all tasks' already
    are), and the KL's curvature in them."""
    sub = subsample.tasks
    keep = slice(None) if sub is None else slice(0, sub)
    weights = masked_mean_weights(objective.query.mask[keep]) * subsample.share
    curvature = gaussian_kl_curvature(objective.old_std[keep], weights)

    def outputs() -> tuple[Tensor, ...]:
        if sub == 0:  # none of this rank's tasks: no outputs, a zero product
            return ()
        return computed if computed is not None else objective.distribution(sub)

    return GaussNewton(outputs, curvature)


def _descend(loss: Tensor, params: list[Tensor], optimizer: torch.optim.Optimizer,
             reduce: Callable[[Tensor], Tensor] | None) -> None:
    """One optimizer step on ``loss``; under torchrun the ranks' weighted gradients summed."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if reduce is not None:
        for p in params:
            p.grad = reduce(p.grad if p.grad is not None else torch.zeros_like(p))
    optimizer.step()


__all__ = ["FISHER_PRODUCTS", "OUTER_STEPS", "OuterSettings", "OuterStats", "outer_step"]
