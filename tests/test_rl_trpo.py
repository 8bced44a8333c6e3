"""rl/trpo.py: the conjugate-gradient solve and the line search on small problems."""


import torch

from mamlkit.rl.trpo import solve, trpo_step


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
