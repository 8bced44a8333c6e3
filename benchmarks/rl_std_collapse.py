"""Why second-order meta-RL shrinks the policy's standard deviation: the meta-gradient on log_std.

For fixed sampled trajectories the inner VPG step on the mean network scales as ``1/sigma^2``
(``d log pi / d mu = (a - mu) / sigma^2``), so ``d theta'_mean / d log_sigma = -2 * step``. The
second-order meta-gradient therefore carries, on log_std, the extra term
``-2 * <dL_post/dtheta'_mean, step>``: positive (gradient descent lowers sigma) whenever the
inner step helps the query loss. First order drops it. This script measures, on fresh meta-batches
of a run's policy (or the untrained one), the outer surrogate's gradient on log_std with second
and first order, their difference, and that predicted term.

    python benchmarks/rl_std_collapse.py [RUN_DIR] [--batches 5]
"""

from __future__ import annotations

import argparse
import json

import torch

from mamlkit.rl.losses import gaussian_log_prob, surrogate_loss
from mamlkit.run import config as config_lib
from mamlkit.run.adapted import adapted_policy, query_actions
from mamlkit.run.build import build_tasks
from mamlkit.run.load import load, untrained


def post_loss(policy, query, params, batched):
    """The outer surrogate of the query trajectories with ``params`` (stacked if batched)."""
    from mamlkit.functional import Batching, forward

    if batched:
        mean, std = Batching("vmap").map(lambda ops, p, q: query_actions(ops, p, q), policy, {},
                                         None, params, query, batched_params=True)
    else:
        mean, std = forward(policy, params, {}, query.observations)
    logp = gaussian_log_prob(mean, std, query.actions)
    return surrogate_loss(logp, logp.detach(), query.advantages, query.mask)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?")
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        learner = load(args.run)
    else:
        learner = untrained(config_lib.resolve("nav2d", {}))
    config, policy = learner.config, learner.model
    tasks = build_tasks(config, "train")
    generator = torch.Generator().manual_seed(123)
    rows = []
    for _ in range(args.batches):
        rl = tasks.collect(tasks.sample_tasks(config.meta_batch_size, generator), generator,
                           adapted_policy(learner), 1)
        grads = {}
        for name, fo in (("second_order", False), ("first_order", True)):
            learner.first_order = fo
            mean, std = learner.map_adapted(rl.tasks, query_actions)
            logp = gaussian_log_prob(mean, std, rl.tasks.query.actions)
            loss = surrogate_loss(logp, logp.detach(), rl.tasks.query.advantages,
                                  rl.tasks.query.mask)
            grads[name] = torch.autograd.grad(loss, policy.log_std)[0].sum().item()
        # predicted extra term: -2 <dL_post/dtheta'_mean, inner step on the mean network>
        theta = {n: p.detach() for n, p in policy.named_parameters()}
        stepped, _ = learner.adapted_params(rl.tasks.support, 1)
        stepped = {n: p.detach().requires_grad_(True) for n, p in stepped.items()}
        loss = post_loss(policy, rl.tasks.query, stepped, True)
        names = [n for n in stepped if n != "log_std"]
        g_post = torch.autograd.grad(loss, [stepped[n] for n in names])
        inner_step = [stepped[n].detach() - theta[n] for n in names]
        predicted = -2 * sum((g * s).sum() for g, s in zip(g_post, inner_step, strict=True))
        rows.append({**grads, "difference": grads["second_order"] - grads["first_order"],
                     "predicted_mean_term": predicted.item(),
                     "pre_return": rl.pre_return, "post_return": rl.post_return})
    print(json.dumps({"policy": learner.checkpoint, "std": policy.log_std.exp().tolist(),
                      "batches": rows}, indent=1))


if __name__ == "__main__":
    main()
