"""rl/losses.py: the policy-gradient losses by hand and against torch.distributions, and
VPGLoss as the inner loop's task loss (its step by hand, its second-order gradient by finite
differences)."""

import math

import pytest
import torch
from rl_synthetic import distribution, rl_batch, synthetic, tiny_policy

from mamlkit import MAML
from mamlkit.rl import losses as L
from mamlkit.rl.losses import VPGLoss


def test_vpg_gradient_is_reinforce_by_hand():
    """mean = w * s, std = exp(log_std): grad of the loss is -mean(grad log pi * A)."""
    g = torch.Generator().manual_seed(1)
    s, a, adv = (torch.randn(7, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0], dtype=torch.float64)
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    mean, std = (w * s).unsqueeze(-1), torch.exp(log_std).expand(7, 1)
    loss = L.vpg_loss(L.gaussian_log_prob(mean, std, a.unsqueeze(-1)), adv, mask)
    gw, gs = torch.autograd.grad(loss, (w, log_std))
    with torch.no_grad():
        sigma, mu = math.exp(-0.3), 0.7 * s
        dlogp_dw = (a - mu) * s / sigma**2
        dlogp_ds = (a - mu) ** 2 / sigma**2 - 1.0
        n = mask.sum()
        assert torch.allclose(gw, -(dlogp_dw * adv * mask).sum() / n)
        assert torch.allclose(gs, -(dlogp_ds * adv * mask).sum() / n)


def test_gaussian_log_prob_and_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(2)
    m1, m2, a = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    s1, s2 = (torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.2 for _ in range(2))
    p, q = torch.distributions.Normal(m1, s1), torch.distributions.Normal(m2, s2)
    assert torch.allclose(L.gaussian_log_prob(m1, s1, a), p.log_prob(a).sum(-1))
    assert torch.allclose(L.gaussian_kl(m1, s1, m2, s2),
                          torch.distributions.kl_divergence(p, q).sum(-1))


def test_ppo_clip_stops_the_gradient_outside_the_clip_range():
    mask = torch.ones(4, dtype=torch.float64)
    old = torch.zeros(4, dtype=torch.float64)
    # ratios 1.5 and 0.5 with advantages +1 / -1 are clipped (no gradient); 1.1 / 0.9 are not
    log_probs = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.9], dtype=torch.float64))
    log_probs.requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    loss = L.ppo_clip_loss(log_probs, old, adv, mask, clip=0.2)
    (grad,) = torch.autograd.grad(loss, log_probs)
    ratio = log_probs.detach().exp()
    assert grad[0] == 0 and grad[1] == 0
    assert torch.allclose(grad[2:], -ratio[2:] * adv[2:] / 4)
    # the pessimistic side is not clipped: ratio 0.5 with a positive advantage keeps its gradient
    loss = L.ppo_clip_loss(log_probs, old, adv.abs(), mask, clip=0.2)
    (grad,) = torch.autograd.grad(loss, log_probs)
    assert grad[1] != 0 and grad[0] == 0
    assert torch.allclose(L.ppo_clip_loss(old, old, adv, mask), L.surrogate_loss(old, old, adv,
                                                                                mask))


def _flat_grad(fn, policy):
    loss = fn()
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(policy.parameters()))])


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_adaptation_gradient_matches_finite_differences(steps):
    """The RL inner step is the functional core's inner step on the VPG task loss."""
    policy = tiny_policy()
    batch = rl_batch([synthetic(seed=s) for s in range(steps)], synthetic(seed=10))
    query = batch.query
    learner = MAML(policy, inner_lr=0.3, inner_steps=steps, loss_fn=VPGLoss())

    def outer_loss():
        mean, std = distribution(learner, batch)(None)
        return L.vpg_loss(L.gaussian_log_prob(mean, std, query.actions), query.advantages,
                          query.mask)

    analytic = _flat_grad(outer_loss, policy)
    numeric, eps = torch.zeros_like(analytic), 1e-6
    with torch.no_grad():
        flat = torch.nn.utils.parameters_to_vector(policy.parameters())
        for i in range(flat.numel()):
            for sign in (1, -1):
                shifted = flat.clone()
                shifted[i] += sign * eps
                torch.nn.utils.vector_to_parameters(shifted, policy.parameters())
                numeric[i] += sign * outer_loss().item() / (2 * eps)
        torch.nn.utils.vector_to_parameters(flat, policy.parameters())
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-7)
    learner.first_order = True
    assert not torch.allclose(_flat_grad(outer_loss, policy), analytic, atol=1e-4)


def test_vpg_inner_step_is_the_policy_gradient_step_by_hand():
    """theta' = theta - alpha grad L_VPG(theta) of every task, against a per-task autograd loop."""
    policy = tiny_policy()
    batch = rl_batch([synthetic(seed=0)], synthetic(seed=1))
    params, batched = MAML(policy, 0.3, loss_fn=VPGLoss()).adapted_params(batch.support)
    assert batched
    for t in range(batch.num_tasks):
        data = batch.support[0]
        mean, std = policy(data.observations[t])
        loss = L.vpg_loss(L.gaussian_log_prob(mean, std, data.actions[t]), data.advantages[t],
                          data.mask[t])
        grads = torch.autograd.grad(loss, list(policy.parameters()))
        for (name, p), g in zip(policy.named_parameters(), grads, strict=True):
            torch.testing.assert_close(params[name][t], (p - 0.3 * g).detach())
