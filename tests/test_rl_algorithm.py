"""The meta-RL calculus: policy-gradient losses, TRPO, adaptation gradients, PPO clipping."""

import math

import pytest
import torch

from mamlkit import ANIL, MAML, MAMLpp, MetaSGD, StepData, TaskBatch
from mamlkit.rl import losses as L
from mamlkit.rl.losses import RLData, VPGLoss
from mamlkit.rl.outer import OuterSettings, outer_step
from mamlkit.rl.policy import GaussianPolicy
from mamlkit.rl.trpo import solve, trpo_step


def synthetic(tasks=3, n=4, h=5, obs=2, act=2, seed=0, dtype=torch.float64) -> RLData:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(tasks, n, h, dtype=dtype)
    mask[:, 0, h - 2:] = 0.0  # one episode per task ended early
    return RLData(torch.randn(tasks, n, h, obs, generator=g, dtype=dtype),
                  torch.randn(tasks, n, h, act, generator=g, dtype=dtype),
                  torch.randn(tasks, n, h, generator=g, dtype=dtype), mask)


def rl_batch(support, query) -> TaskBatch:
    return TaskBatch(StepData(support), query, VPGLoss())


def query_actions(ops, params, query):
    return ops.forward(params, query.observations)


def distribution(learner, batch):
    """What the outer step needs: the adapted policies' actions on the first k tasks' queries."""
    return lambda k: learner.map_adapted(batch if k is None else batch[:k], query_actions)


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
    x = solve(lambda v: a @ v, b, iters=30)
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


@pytest.mark.parametrize("first_order,subsample", [(False, 1.0), (True, 1.0), (False, 0.34)])
def test_trpo_outer_step_through_the_adaptation_keeps_the_kl_bound(first_order, subsample):
    policy = tiny_policy()
    batch = rl_batch([synthetic(seed=0)], synthetic(seed=1))
    learner = MAML(policy, 0.3, first_order=first_order, loss_fn=VPGLoss())
    settings = OuterSettings("trpo", max_kl=0.01, cg_subsample=subsample)
    dist = distribution(learner, batch)
    with torch.no_grad():
        old_mean, old_std = dist(None)
    stats = outer_step(list(learner.parameters()), dist, batch.query, settings)
    assert stats.accepted and stats.loss < 0.0  # surrogate starts at -mean(A) ~ 0
    with torch.no_grad():
        mean, std = dist(None)
        kl = L.masked_mean(L.gaussian_kl(old_mean, old_std, mean, std), batch.query.mask)
    assert 0.0 < kl.item() <= 0.01 and abs(kl.item() - stats.kl) < 1e-12


def _surrogate_after_step(learner, outer):
    batch = rl_batch([synthetic(seed=0)], synthetic(seed=1))
    dist = distribution(learner, batch)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    with torch.no_grad():
        mean0, std0 = dist(None)
        logp0 = L.gaussian_log_prob(mean0, std0, batch.query.actions)
    outer_step(list(learner.parameters()), dist, batch.query,
               OuterSettings(outer, ppo_epochs=5), opt)
    with torch.no_grad():
        mean, std = dist(None)
        logp = L.gaussian_log_prob(mean, std, batch.query.actions)
        after = L.surrogate_loss(logp, logp0, batch.query.advantages, batch.query.mask)
    return after.item(), L.surrogate_loss(logp0, logp0, batch.query.advantages,
                                          batch.query.mask).item()


@pytest.mark.parametrize("outer", ["ppo", "adam"])
def test_ppo_and_adam_outer_steps_lower_the_surrogate(outer):
    after, before = _surrogate_after_step(MAML(tiny_policy(), 0.3, loss_fn=VPGLoss()), outer)
    assert after < before


@pytest.mark.parametrize("make", [
    lambda p: MetaSGD(p, 0.3, loss_fn=VPGLoss()),
    lambda p: ANIL(p, 0.3, loss_fn=VPGLoss()),
    lambda p: MAMLpp(p, 0.3, 1, loss_fn=VPGLoss(), msl_iterations=10),
])
def test_the_family_learns_on_rl_tasks(make):
    """Meta-SGD, ANIL and MAML++ take the RL outer step through their own inner loops."""
    after, before = _surrogate_after_step(make(tiny_policy()), "adam")
    assert after < before


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
