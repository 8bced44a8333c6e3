"""The meta-RL step of MAML (Finn et al. 2017, section 3.3).

For every task of a meta-batch: trajectories sampled with theta (the support set), ``inner_steps``
vanilla policy-gradient steps ``theta' = theta - alpha grad L_VPG`` (with fresh trajectories
after every step), then trajectories sampled with theta' (the query set). The outer step improves
the return of theta' as a function of theta: TRPO as in the paper (the surrogate loss and the KL
are computed *through* the adaptation), PPO-clip, or a plain Adam step. ``first_order`` treats
the inner gradient as a constant.

Per-task adapted parameters carry a leading task dimension and every network call over them is a
``torch.func.vmap`` of ``functional_call``: one call per meta-batch, not per task.

Why a second-order meta-gradient shrinks the policy's standard deviation: for the sampled
support trajectories the inner gradient on the mean network is ``-A (a - mu) / sigma^2 dmu``, so
the inner step ``s`` scales as ``1 / sigma^2`` and ``d theta'_mean / d log_sigma = -2 s``. The
second-order meta-gradient on log_std therefore holds the extra term
``-2 <dL_query/dtheta', s>``, positive, so that descent lowers sigma, whenever the inner step
helps the query loss: sigma acts as an inverse learned inner learning rate
(``benchmarks/rl_std_collapse.py`` measures the term; it matches the second-minus-first-order
gradient to 1-2%). Nothing pushes back: what a larger sigma is worth, more informative support
trajectories, reaches the meta-gradient only through the support trajectories' dependence on
theta, a term the paper's estimator (and this one) leaves out (ProMP, Rothfuss et al. 2019).
As sigma falls the inner step on the mean grows like ``1 / sigma`` (``a - mu`` is of order sigma)
and overshoots while exploration shrinks, so post-adaptation return turns down. ``min_std``
(a floor on sigma) bounds this; ``best/`` keeps the peak. First order lacks the extra term
and shrinks sigma more slowly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mamlkit.rl.losses import (
    gaussian_kl,
    gaussian_log_prob,
    masked_mean,
    ppo_clip_loss,
    surrogate_loss,
    vpg_loss,
)
from mamlkit.rl.policy import call, per_task, policy_params, sampling_fn
from mamlkit.rl.trpo import same, trpo_step

Params = dict[str, Tensor]


@dataclass
class RLData:
    """What the losses need from a group of trajectories: ``obs [T,N,H,o]``, ``actions``,
    ``advantages [T,N,H]`` (constants) and ``mask``."""

    observations: Tensor
    actions: Tensor
    advantages: Tensor
    mask: Tensor


@dataclass
class RLSettings:
    """The meta-RL hyper-parameters (a view of the run's Config)."""

    inner_lr: float = 0.1
    inner_steps: int = 1
    first_order: bool = False
    trajectories: int = 20
    discount: float = 0.99
    gae_lambda: float = 1.0
    outer: str = "trpo"  # trpo | ppo | adam
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ppo_clip: float = 0.2
    ppo_epochs: int = 5
    cg_subsample: float = 1.0  # fraction of the meta-batch's tasks whose KL gives TRPO's H
    horizon: int | None = None


@dataclass
class MetaBatch:
    """The sampled data of one meta-iteration: support data per inner step, and the query data."""

    support: list[RLData]
    query: RLData
    pre_return: float
    post_return: float
    support_episodes: list = field(default_factory=list)
    query_episodes: object = None


def advantages_of(episodes, discount: float, gae_lambda: float) -> Tensor:
    """GAE on the linear feature baseline, normalised per task (the paper's advantages)."""
    from mamlkit.rl.baseline import linear_baseline
    from mamlkit.rl.returns import gae, normalize

    values = linear_baseline(episodes, discount)
    adv = gae(episodes.rewards, values, episodes.mask, discount, gae_lambda)
    return normalize(adv, episodes.mask)


def rl_data(episodes, discount: float, gae_lambda: float) -> RLData:
    return RLData(episodes.observations, episodes.actions,
                  advantages_of(episodes, discount, gae_lambda), episodes.mask)


def inner_loss(policy: nn.Module, params: Mapping[str, Tensor], obs: Tensor, actions: Tensor,
               advantages: Tensor, mask: Tensor) -> Tensor:
    """One task's VPG loss (REINFORCE with a baseline) for parameters without a task dim."""
    mean, std = call(policy, params, obs)
    return vpg_loss(gaussian_log_prob(mean, std, actions), advantages, mask)


def inner_update(policy: nn.Module, params: Mapping[str, Tensor], batched: bool, data: RLData,
                 lr: float, first_order: bool,
                 loss_fn: Callable[..., Tensor] = inner_loss) -> Params:
    """One inner step for every task at once; returns parameters with a leading task dim.

    ``batched`` says whether ``params`` already carry a task dim (after a first step).
    """
    def one(p: Params, obs: Tensor, act: Tensor, adv: Tensor, mask: Tensor) -> Params:
        grads = torch.func.grad(lambda q: loss_fn(policy, q, obs, act, adv, mask))(p)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        return {n: p[n] - lr * grads[n] for n in p}

    in_dims = (0 if batched else None, 0, 0, 0, 0)
    return torch.func.vmap(one, in_dims=in_dims)(
        dict(params), data.observations, data.actions, data.advantages, data.mask)


def adapt(policy: nn.Module, support: Sequence[RLData], lr: float, first_order: bool,
          params: Mapping[str, Tensor] | None = None) -> tuple[Params, bool]:
    """theta' of every task from the support data of each inner step (differentiable in theta).

    Returns ``(params, batched)``; with ``lr = 0`` or no support data theta itself, unbatched.
    """
    params = dict(policy_params(policy) if params is None else params)
    batched = False
    if lr == 0:
        return params, batched
    for data in support:
        params = inner_update(policy, params, batched, data, lr, first_order)
        batched = True
    return params, batched


def collect(env, policy: nn.Module, tasks: list[dict], settings: RLSettings,
            generator: torch.Generator, inner_lr: float | None = None,
            steps: int | None = None, task_slice: slice | None = None) -> MetaBatch:
    """Sample support trajectories with theta, adapt, and sample query trajectories with theta'.

    Sampling needs no gradients: the adapted parameters are recomputed differentiably by the
    losses from the stored support data. ``task_slice`` keeps only those tasks (a torchrun
    rank's share); the generator advances as for all tasks and every task keeps its own seed,
    so a rank's episodes are exactly the ones one process would sample for those tasks.
    """
    from mamlkit.rl.sampling import rollout, task_generators

    share = task_slice or slice(None)

    def sample(policy_fn):
        generators = task_generators(generator, len(tasks))
        return rollout(env, policy_fn, tasks[share], settings.trajectories, generators[share],
                       settings.horizon)

    lr = settings.inner_lr if inner_lr is None else inner_lr
    steps = settings.inner_steps if steps is None else steps
    if lr == 0:
        steps = 0
    params, batched = policy_params(policy), False
    support, support_episodes = [], []
    for _ in range(steps):
        episodes = sample(sampling_fn(policy, params, batched))
        data = rl_data(episodes, settings.discount, settings.gae_lambda)
        support.append(data)
        support_episodes.append(episodes)
        with torch.no_grad():
            params = inner_update(policy, params, batched, data, lr, first_order=True)
        batched = True
    query_episodes = sample(sampling_fn(policy, params, batched))
    post = query_episodes.mean_return()
    pre = support_episodes[0].mean_return() if support_episodes else post
    return MetaBatch(support, rl_data(query_episodes, settings.discount, settings.gae_lambda),
                     pre, post, support_episodes, query_episodes)


def query_distribution(policy: nn.Module, batch: MetaBatch, lr: float,
                       first_order: bool) -> tuple[Tensor, Tensor]:
    """Mean and std of the adapted policies on the query observations, ``[T, N, H, act]``."""
    params, batched = adapt(policy, batch.support, lr, first_order)
    return per_task(policy, params, batch.query.observations, batched)


def _first_tasks(batch: MetaBatch, k: int) -> MetaBatch:
    def cut(d: RLData) -> RLData:
        return RLData(d.observations[:k], d.actions[:k], d.advantages[:k], d.mask[:k])

    return MetaBatch([cut(d) for d in batch.support], cut(batch.query), batch.pre_return,
                     batch.post_return)


@dataclass
class OuterStats:
    loss: float
    kl: float = 0.0
    accepted: bool = True
    step_fraction: float = 1.0


def outer_step(policy: nn.Module, batch: MetaBatch, settings: RLSettings,
               optimizer: torch.optim.Optimizer | None = None,
               extra_loss: Callable[[], Tensor] | None = None,
               reduce: Callable[[Tensor], Tensor] | None = None,
               world_size: int = 1, task_slice: slice | None = None,
               num_tasks: int | None = None) -> OuterStats:
    """Update theta from one meta-batch with ``settings.outer`` (trpo, ppo or adam).

    ``extra_loss`` (the weighted loss of supervised tasks in a mixed meta-batch) is added to the
    RL surrogate; TRPO takes it into its objective but not into its KL. Under torchrun ``batch``
    holds this rank's tasks and ``reduce`` sums over ranks: each rank's losses are weighted by
    its share of the meta-batch's valid time steps (``extra_loss``, the same on every rank, by
    ``1 / world_size``) and gradients and values are summed, which gives every rank the update
    of one process. ``task_slice`` and ``num_tasks`` say which tasks of the whole meta-batch
    this rank holds (for the KL Hessian's subsample).
    """
    lr, fo = settings.inner_lr, settings.first_order
    query = batch.query
    total = same if reduce is None else reduce
    steps_here = query.mask.sum()
    share = 1.0 if reduce is None else steps_here / total(steps_here.clone())
    if extra_loss is not None and world_size > 1:
        full_extra = extra_loss

        def extra_loss() -> Tensor:
            return full_extra() / world_size
    with torch.no_grad():
        old_mean, old_std = query_distribution(policy, batch, lr, fo)
        old_log_probs = gaussian_log_prob(old_mean, old_std, query.actions)

    def log_probs_and_dist() -> tuple[Tensor, Tensor, Tensor]:
        mean, std = query_distribution(policy, batch, lr, fo)
        return gaussian_log_prob(mean, std, query.actions), mean, std

    def surrogate() -> Tensor:
        log_probs, _, _ = log_probs_and_dist()
        loss = surrogate_loss(log_probs, old_log_probs, query.advantages, query.mask) * share
        return loss + extra_loss() if extra_loss is not None else loss

    def kl() -> Tensor:
        _, mean, std = log_probs_and_dist()
        return masked_mean(gaussian_kl(old_mean, old_std, mean, std), query.mask) * share

    # the KL Hessian of the meta-batch's first tasks only (tasks are drawn i.i.d.): an unbiased,
    # cheaper H; a rank holding tasks start.. of the meta-batch keeps those among the first
    here = query.mask.shape[0]
    whole = here if num_tasks is None else num_tasks
    start = 0 if task_slice is None else task_slice.start or 0
    whole_sub = max(1, round(settings.cg_subsample * whole))
    sub = min(max(whole_sub - start, 0), here)
    part = _first_tasks(batch, sub)
    part_steps = part.query.mask.sum()
    part_share = 1.0 if reduce is None else part_steps / total(part_steps.clone())
    params = list(policy.parameters())

    def kl_part() -> Tensor:
        if sub == 0:  # none of this rank's tasks: a zero share that still joins the all-reduce
            return sum((p * p).sum() for p in params) * 0.0
        mean, std = query_distribution(policy, part, lr, fo)
        return masked_mean(gaussian_kl(old_mean[:sub], old_std[:sub], mean, std),
                           part.query.mask) * part_share

    if settings.outer == "trpo":
        stats = trpo_step(params, surrogate, kl, settings.max_kl, settings.cg_iters,
                          settings.cg_damping,
                          hessian_kl_fn=kl_part if whole_sub < whole else None,
                          reduce=total)
        return OuterStats(stats.loss_after, stats.kl, stats.accepted, stats.step_fraction)
    if optimizer is None:
        raise ValueError(f"The {settings.outer!r} outer step needs an optimizer.")
    if settings.outer == "adam":
        loss = surrogate()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _sum_grads(policy, reduce)
        optimizer.step()
        return OuterStats(total(loss.detach()).item())
    if settings.outer == "ppo":
        for _ in range(settings.ppo_epochs):
            log_probs, _, _ = log_probs_and_dist()
            loss = ppo_clip_loss(log_probs, old_log_probs, query.advantages, query.mask,
                                 settings.ppo_clip) * share
            if extra_loss is not None:
                loss = loss + extra_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _sum_grads(policy, reduce)
            optimizer.step()
        with torch.no_grad():
            final_kl = total(kl()).item()
        return OuterStats(total(loss.detach()).item(), final_kl)
    raise ValueError(f"Unknown outer step {settings.outer!r}; choose trpo, ppo or adam.")


def _sum_grads(policy: nn.Module, reduce: Callable[[Tensor], Tensor] | None) -> None:
    """Every rank's gradient becomes the sum of the ranks' weighted shares (no-op alone)."""
    if reduce is None:
        return
    for p in policy.parameters():
        p.grad = reduce(p.grad if p.grad is not None else torch.zeros_like(p))


def meta_step(env, policy: nn.Module, tasks: list[dict], settings: RLSettings,
              generator: torch.Generator,
              optimizer: torch.optim.Optimizer | None = None) -> tuple[MetaBatch, OuterStats]:
    """One meta-iteration: sample, adapt, sample again, update theta."""
    batch = collect(env, policy, tasks, settings, generator)
    return batch, outer_step(policy, batch, settings, optimizer)
