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

from mamlkit import config as config_lib
from mamlkit.rl.losses import gaussian_log_prob, surrogate_loss
from mamlkit.rl.meta import adapt, collect, inner_update
from mamlkit.rl.policy import per_task
from mamlkit.train_rl import build_env, build_policy, load_policy, settings_of


def post_loss(policy, batch, params, batched):
    mean, std = per_task(policy, params, batch.query.observations, batched)
    logp = gaussian_log_prob(mean, std, batch.query.actions)
    return surrogate_loss(logp, logp.detach(), batch.query.advantages, batch.query.mask)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?")
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        policy, config, which = load_policy(args.run)
    else:
        config, which = config_lib.resolve("nav2d", {}), "untrained"
        policy = build_policy(config, build_env(config))
    env = build_env(config)
    settings = settings_of(config)
    generator = torch.Generator().manual_seed(123)
    rows = []
    for _ in range(args.batches):
        batch = collect(env, policy, env.sample_tasks(config.meta_batch_size, generator),
                        settings, generator)
        grads = {}
        for name, fo in (("second_order", False), ("first_order", True)):
            params, batched = adapt(policy, batch.support, settings.inner_lr, fo)
            loss = post_loss(policy, batch, params, batched)
            grads[name] = torch.autograd.grad(loss, policy.log_std)[0].sum().item()
        # predicted extra term: -2 <dL_post/dtheta'_mean, inner step on the mean network>
        theta = {n: p.detach() for n, p in policy.named_parameters()}
        stepped = inner_update(policy, theta, False, batch.support[0], settings.inner_lr, True)
        stepped = {n: p.detach().requires_grad_(True) for n, p in stepped.items()}
        loss = post_loss(policy, batch, stepped, True)
        names = [n for n in stepped if n != "log_std"]
        g_post = torch.autograd.grad(loss, [stepped[n] for n in names])
        inner_step = [stepped[n].detach() - theta[n] for n in names]
        predicted = -2 * sum((g * s).sum() for g, s in zip(g_post, inner_step, strict=True))
        rows.append({**grads, "difference": grads["second_order"] - grads["first_order"],
                     "predicted_mean_term": predicted.item(),
                     "pre_return": batch.pre_return, "post_return": batch.post_return})
    print(json.dumps({"policy": which, "std": policy.log_std.exp().tolist(), "batches": rows},
                     indent=1))


if __name__ == "__main__":
    main()
