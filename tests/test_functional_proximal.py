"""iMAML's inner solver reaches the proximal optimum, and the implicit meta-gradient there is the
gradient of L_query(phi*(theta)), checked against closed forms and finite differences."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mamlkit import IMAML, TaskBatch
from mamlkit.functional import mse
from mamlkit.functional.proximal import ProximalSolver, proximal_grad
from mamlkit.models import mlp


def regression(d=4, n=6, tasks=2, scale=1.0, seed=0):
    """Linear-regression tasks; ``scale`` stretches the inputs (support curvature ~ scale^2)."""
    g = torch.Generator().manual_seed(seed)
    xs, xq = (scale * torch.randn(tasks, n, d, generator=g, dtype=torch.double) for _ in "sq")
    w = torch.randn(tasks, d, 1, generator=g, dtype=torch.double)
    return TaskBatch((xs, xs @ w), (xq, xq @ w))


def closed_form_phi(theta, x, y, lam):
    """argmin_w mean((x w - y)^2) + lam/2 |w - theta|^2, differentiable in theta."""
    n, d = x.shape
    a = 2 / n * x.T @ x + lam * torch.eye(d, dtype=x.dtype)
    return torch.linalg.solve(a, 2 / n * x.T @ y + lam * theta.T).T


def bound_linear(model):
    return lambda p, data: mse(functional_call(model, p, (data[0],)), data[1])


@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_lbfgs_reaches_the_closed_form_optimum_where_fixed_steps_do_not(scale):
    """Support curvature above 2 / inner_lr (scale 6) makes fixed steps diverge; L-BFGS with its
    line search reaches phi* either way, in fewer steps than gd needs on the easy case."""
    model = nn.Linear(4, 1, bias=False).double()
    theta = {n: p.detach() for n, p in model.named_parameters()}
    batch, lam, lr = regression(scale=scale), 2.0, 0.1
    x, y = batch.support[0][0], batch.support[1][0]
    exact = closed_form_phi(theta["weight"], x, y, lam)
    solve = {kind: ProximalSolver(kind, lr, lam).solve(bound_linear(model), theta, (x, y), 30)
             for kind in ("lbfgs", "gd")}
    torch.testing.assert_close(solve["lbfgs"]["weight"], exact, atol=1e-8, rtol=0)
    gd_error = (solve["gd"]["weight"] - exact).abs().max()
    assert gd_error > 1e-6 if scale == 1.0 else not gd_error < 1e3  # slow, or diverged


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_implicit_gradient_is_the_gradient_through_the_closed_form_optimum(batching):
    """Linear model, MSE: d/dtheta L_q(phi*(theta)) by autograd through the closed-form phi*
    equals iMAML's meta-gradient with L-BFGS inside and exact conjugate gradient."""
    d, lam = 4, 1.5
    model = nn.Linear(d, 1, bias=False).double()
    batch = regression(d=d, scale=3.0)
    learner = IMAML(model, inner_lr=0.1, inner_steps=40, lam=lam, cg_steps=d, batching=batching,
                    tol=1e-12)
    learner.meta_loss(batch).backward()
    theta = model.weight.detach().clone().requires_grad_(True)
    losses = [mse(xq @ closed_form_phi(theta, xs, ys, lam).T, yq)
              for xs, ys, xq, yq in zip(*batch.support, *batch.query, strict=True)]
    (exact,) = torch.autograd.grad(torch.stack(losses).mean(), theta)
    torch.testing.assert_close(model.weight.grad, exact, atol=1e-7, rtol=0)
    learner.zero_grad()
    learner.cg_steps = 1  # the first-order answer: the Hessian term matters here
    learner.meta_loss(batch).backward()
    assert (model.weight.grad - exact).abs().max() > 1e-3


@pytest.mark.slow
def test_implicit_gradient_matches_finite_differences_on_a_nonlinear_net():
    """Tanh MLP: the meta-objective L_q(phi*(theta)), phi* solved to rounding precision, along
    random directions by central differences, against the implicit meta-gradient."""
    torch.manual_seed(0)
    model = mlp([1, 5, 1], activation=nn.Tanh).double()
    g = torch.Generator().manual_seed(1)
    xs, xq = (torch.rand(1, 6, 1, generator=g, dtype=torch.double) * 4 - 2 for _ in "sq")
    batch = TaskBatch((xs, torch.sin(2 * xs)), (xq, torch.sin(2 * xq)))
    lam = 1.0
    learner = IMAML(model, inner_lr=0.05, inner_steps=200, lam=lam, cg_steps=16, tol=1e-11)
    learner.meta_loss(batch).backward()
    names = [n for n, _ in model.named_parameters()]
    implicit = {n: p.grad for n, p in model.named_parameters()}
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    solver = learner.solver()

    exact = ProximalSolver("lbfgs", 0.05, lam)  # tol 0: until no decrease is left

    def objective(params):
        loss = bound_linear(model)
        phi = exact.solve(loss, params, (xs[0], torch.sin(2 * xs[0])), 200)
        return loss(phi, (xq[0], torch.sin(2 * xq[0])))

    for seed in range(2):
        direction = {n: torch.randn(theta[n].shape, generator=torch.Generator().manual_seed(seed),
                                    dtype=torch.double) for n in names}
        eps = 1e-4
        plus = objective({n: theta[n] + eps * direction[n] for n in names})
        minus = objective({n: theta[n] - eps * direction[n] for n in names})
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((implicit[n] * direction[n]).sum() for n in names)
        assert abs(numeric - analytic) < 1e-6 * max(1.0, abs(analytic))
    g_phi, _ = proximal_grad(bound_linear(model), solver.solve(bound_linear(model), theta,
                             (xs[0], torch.sin(2 * xs[0])), 200), theta,
                             (xs[0], torch.sin(2 * xs[0])), lam)
    assert max(t.abs().max() for t in g_phi.values()) < 1e-7  # it is the optimum


def test_solver_keys_and_bad_values_are_one_sentence():
    from mamlkit.run.build import build_learner, build_network, build_tasks
    from mamlkit.run.config import ConfigError, resolve

    config = resolve("sinusoid-imaml", {"imaml_solver": "gd", "imaml_tol": 0.0})
    tasks = build_tasks(config)
    learner = build_learner(config, build_network(config, tasks), tasks)
    assert learner.solver().kind == "gd" and learner.solver().tol == 0.0
    assert resolve("sinusoid-imaml", {}).imaml_solver == "lbfgs"
    with pytest.raises(ConfigError, match="imaml_solver"):
        resolve("sinusoid-imaml", {"imaml_solver": "adam"})
    with pytest.raises(ConfigError, match="imaml_tol"):
        resolve("sinusoid-imaml", {"imaml_tol": -1})
    with pytest.raises(ValueError, match="Unknown iMAML inner solver 'newton'"):
        IMAML(mlp([1, 4, 1]), 0.01, solver="newton")


@pytest.mark.parametrize("kind,tol", [("lbfgs", 0.0), ("lbfgs", 1e-6), ("gd", 1e-3)])
def test_eager_solver_takes_the_same_iterates_with_fewer_evaluations(kind, tol):
    """The one-task-at-a-time solver (loop batching, ``adapt``) branches on values: trial steps
    in order until one is accepted, nothing once frozen. Same iterates as the branch-free one,
    which tries every step length at once and keeps computing a frozen iterate."""
    torch.manual_seed(0)
    model = mlp([1, 8, 1], activation=nn.Tanh).double()
    theta = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(2)
    x = torch.rand(8, 1, generator=g, dtype=torch.double) * 4 - 2
    data, calls = (x, torch.sin(3 * x)), {"n": 0}

    def loss(p, d):
        calls["n"] += 1
        return bound_linear(model)(p, d)

    walks = {}
    for eager in (False, True):
        calls["n"] = 0
        solver = ProximalSolver(kind, 0.2, 1.0, tol=tol, eager=eager)
        walks[eager] = ([flat(p) for p in solver.iterates(loss, theta, data, 60)], calls["n"])
    (branch_free, free_calls), (eager_walk, eager_calls) = walks[False], walks[True]
    assert len(eager_walk) == len(branch_free) == 61
    for a, b in zip(eager_walk, branch_free, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert torch.equal(eager_walk[-1], eager_walk[-2])  # it froze before the last step
    assert eager_calls < free_calls  # loss calls (a branch-free line search is one call of 16)


def flat(params):
    return torch.cat([t.reshape(-1) for t in params.values()])


@pytest.mark.parametrize("kind", ["lbfgs", "gd"])
def test_a_step_size_per_parameter_is_refused_in_one_sentence(kind):
    theta = {"w": torch.ones(2, dtype=torch.double)}
    solver = ProximalSolver(kind, {"w": 0.1}, lam=1.0)
    with pytest.raises(TypeError, match=r"^The proximal solver takes one step size per step, "
                                        r"not one per parameter\.$"):
        solver.solve(lambda p, s: (p["w"] ** 2).sum(), theta, None, 2)
