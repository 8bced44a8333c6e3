"""rl/outer.py: TRPO, PPO and Adam outer steps through the adaptation, for the whole family."""


import pytest
import torch
from rl_synthetic import distribution, rl_batch, synthetic, tiny_policy

from mamlkit import ANIL, MAML, MAMLpp, MetaSGD
from mamlkit.rl import losses as L
from mamlkit.rl.losses import VPGLoss
from mamlkit.rl.outer import OuterSettings, outer_step


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
