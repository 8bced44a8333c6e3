"""The meta-RL calculus: policy-gradient losses, TRPO, adaptation gradients, PPO clipping."""

import math

import pytest
import torch

from mamlkit.rl import losses as L
from mamlkit.rl.meta import MetaBatch, RLData, RLSettings, adapt, outer_step, query_distribution
from mamlkit.rl.policy import GaussianPolicy, per_task
from mamlkit.rl.trpo import conjugate_gradient, trpo_step


def synthetic(tasks=3, n=4, h=5, obs=2, act=2, seed=0, dtype=torch.float64) -> RLData:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(tasks, n, h, dtype=dtype)
    mask[:, 0, h - 2:] = 0.0  # one episode per task ended early
    return RLData(torch.randn(tasks, n, h, obs, generator=g, dtype=dtype),
                  torch.randn(tasks, n, h, act, generator=g, dtype=dtype),
                  torch.randn(tasks, n, h, generator=g, dtype=dtype), mask)


def tiny_policy(hidden=(5,), min_std=1e-6):
    torch.manual_seed(0)
    return GaussianPolicy(2, 2, hidden, "tanh", init_std=0.8, min_std=min_std).double()


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


def test_conjugate_gradient_solves_a_small_spd_system():
    g = torch.Generator().manual_seed(3)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=30)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)


def test_trpo_line_search_backtracks_to_the_kl_bound_and_rejects_bad_steps():
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss():
        return -(target * x).sum()

    def kl():  # quadratic model at 0 is 0.5|x|^2, but the quartic term makes it much larger
        return 0.5 * x.pow(2).sum() + 1e4 * x.pow(2).sum() ** 2

    stats = trpo_step([x], loss, kl, max_kl=0.01, cg_damping=0.0)
    assert stats.accepted and stats.step_fraction < 1.0
    assert kl().item() <= 0.01 and loss().item() < 0
    # a loss that rises in every direction beyond a tiny neighbourhood: every step is rejected
    y = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    stats = trpo_step([y], lambda: -(target * y).sum() + 1e6 * y.pow(2).sum(),
                      lambda: 0.5 * y.pow(2).sum(), max_kl=0.01)
    assert not stats.accepted and torch.equal(y.detach(), torch.zeros(3, dtype=torch.float64))


def _flat_grad(fn, policy):
    loss = fn()
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(policy.parameters()))])


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_adaptation_gradient_matches_finite_differences(steps):
    policy = tiny_policy()
    support = [synthetic(seed=s) for s in range(steps)]
    query = synthetic(seed=10)

    def outer_loss():
        params, batched = adapt(policy, support, lr=0.3, first_order=False)
        mean, std = per_task(policy, params, query.observations, batched)
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

    def first_order_loss():
        mean, std = query_distribution(policy, MetaBatch(support, query, 0, 0), 0.3, True)
        return L.vpg_loss(L.gaussian_log_prob(mean, std, query.actions), query.advantages,
                          query.mask)

    assert not torch.allclose(_flat_grad(first_order_loss, policy), analytic, atol=1e-4)


@pytest.mark.parametrize("first_order,subsample", [(False, 1.0), (True, 1.0), (False, 0.34)])
def test_trpo_outer_step_through_the_adaptation_keeps_the_kl_bound(first_order, subsample):
    policy = tiny_policy()
    batch = MetaBatch([synthetic(seed=0)], synthetic(seed=1), 0.0, 0.0)
    settings = RLSettings(inner_lr=0.3, first_order=first_order, max_kl=0.01, outer="trpo",
                          cg_subsample=subsample)
    with torch.no_grad():
        old_mean, old_std = query_distribution(policy, batch, 0.3, first_order)
    stats = outer_step(policy, batch, settings)
    assert stats.accepted and stats.loss < 0.0  # surrogate starts at -mean(A) ~ 0
    with torch.no_grad():
        mean, std = query_distribution(policy, batch, 0.3, first_order)
        kl = L.masked_mean(L.gaussian_kl(old_mean, old_std, mean, std), batch.query.mask)
    assert 0.0 < kl.item() <= 0.01 and abs(kl.item() - stats.kl) < 1e-12


@pytest.mark.parametrize("outer", ["ppo", "adam"])
def test_ppo_and_adam_outer_steps_lower_the_surrogate(outer):
    policy = tiny_policy()
    batch = MetaBatch([synthetic(seed=0)], synthetic(seed=1), 0.0, 0.0)
    settings = RLSettings(inner_lr=0.3, outer=outer, ppo_epochs=5)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    with torch.no_grad():
        mean0, std0 = query_distribution(policy, batch, 0.3, False)
        logp0 = L.gaussian_log_prob(mean0, std0, batch.query.actions)
    outer_step(policy, batch, settings, opt)
    with torch.no_grad():
        mean, std = query_distribution(policy, batch, 0.3, False)
        logp = L.gaussian_log_prob(mean, std, batch.query.actions)
        after = L.surrogate_loss(logp, logp0, batch.query.advantages, batch.query.mask)
    assert after.item() < L.surrogate_loss(logp0, logp0, batch.query.advantages,
                                           batch.query.mask).item()


def test_min_std_floors_the_standard_deviation():
    policy = tiny_policy(min_std=0.5)
    with torch.no_grad():
        policy.log_std.fill_(math.log(0.1))
    _, std = policy(torch.zeros(3, 2, dtype=torch.float64))
    assert torch.allclose(std, torch.full_like(std, 0.5))
