"""rl/policy.py: the Gaussian policy's std floor, and which of its parameters ANIL and Meta-SGD
adapt."""

import math

import torch
from rl_synthetic import distribution, rl_batch, synthetic, tiny_policy

from mamlkit import ANIL, MAML, MetaSGD
from mamlkit.rl.losses import VPGLoss
from mamlkit.rl.policy import GaussianPolicy, sampling_fn


def test_metasgd_with_its_initial_rates_is_maml_and_anil_adapts_the_mean_head():
    policy = tiny_policy()
    batch = rl_batch([synthetic(seed=0)], synthetic(seed=1))
    maml, metasgd = MAML(policy, 0.3, loss_fn=VPGLoss()), MetaSGD(policy, 0.3, loss_fn=VPGLoss())
    a, b = distribution(maml, batch)(None), distribution(metasgd, batch)(None)
    torch.testing.assert_close(a, b)
    anil = ANIL(policy, 0.3, loss_fn=VPGLoss())
    assert anil.adapt_names == ["mean.2.weight", "mean.2.bias"]
    params, _ = anil.adapted_params(batch.support)
    for name, p in policy.named_parameters():
        moved = not torch.equal(params[name][0], p.detach())
        assert moved == (name in anil.adapt_names)


def test_min_std_floors_the_standard_deviation():
    policy = tiny_policy(min_std=0.5)
    with torch.no_grad():
        policy.log_std.fill_(math.log(0.1))
    _, std = policy(torch.zeros(3, 2, dtype=torch.float64))
    assert torch.allclose(std, torch.full_like(std, 0.5))


def test_the_plain_sampling_forward_is_the_policys_own():
    """Sampling's plain forward runs the policy module's ops: the same numbers, shared and per
    task (an adapted copy), relu and tanh."""
    obs = torch.randn(1, 20, 17, generator=torch.Generator().manual_seed(0))
    for activation in ("relu", "tanh"):
        policy = GaussianPolicy(17, 6, (32, 32), activation)
        shared = sampling_fn(policy)
        assert shared.plain is not None
        with torch.no_grad():
            mean, std = policy(obs)
        assert torch.equal(shared(obs)[0], mean) and torch.equal(shared(obs)[1], std)
        params = {n: torch.stack([p.detach(), p.detach() * 0.9]) for n, p in
                  policy.named_parameters()}
        one = sampling_fn(policy, params, batched=True).task_slice(1, 2)
        with torch.no_grad():
            for p in policy.parameters():
                p.mul_(0.9)
            mean, std = policy(obs)
        assert torch.equal(one(obs)[0], mean) and torch.equal(one(obs)[1], std)
