"""The meta-RL estimators (``estimator``: maml | dice | lvc) against a task with a closed form.

One-dimensional bandit: ``a ~ N(mu, sigma^2)``, ``theta = (mu, s = log sigma)``, horizon 1,
reward ``r(a) = -(a - g)^2``, so the expected return is ``R(theta) = -((mu - g)^2 + e^{2s})``.
The inner step is one policy-gradient step on ``N`` support samples,
``theta' = theta + alpha ghat``, ``ghat = mean_i grad log pi(a_i) (r_i - R(theta))`` (the exact
value as a constant baseline), and the meta-objective is ``J(theta) = E_support[R(theta')]``.

Its gradient: ``dJ = E[(I + alpha dghat)^T grad R(theta')] + E[sum_i s_i R(theta')]`` with
``s_i = grad log pi(a_i)``: the Jacobian of the step with the samples held fixed, and the
pre-update sampling term. Expanding ``R(theta')`` to first order around the mean step
``theta + alpha grad R(theta)`` (``E[ghat] = grad R``, ``E[s_i] = 0``), the sampling term is
``alpha E[mean_i s_i s_i^T A_i] grad R``, which is what DiCE's and LVC's Hessians add to
``dghat``; hence to first order in ``alpha^2 Cov(ghat)`` (below this test's Monte-Carlo error at
``alpha = 0.01``, ``N = 100``)

    dJ/dtheta = (I + alpha grad^2 R(theta))^T grad R(theta + alpha grad R(theta)),

a closed form (computed here by autograd on the formula). ``maml`` leaves the sampling term
out: the mean of its estimates differs by ``alpha E[s s^T A] grad R`` (many standard errors).
The estimates go through the library's path: learner, inner loss of the estimator, query
actions sampled with each task's theta', the outer surrogate.
"""


import pytest
import torch
from torch import nn

from mamlkit import ANIL, MAML, MAMLpp, MetaSGD, StepData, TaskBatch
from mamlkit.rl.estimators import DiCELoss, LVCLoss, dice_loss, inner_loss, lvc_loss
from mamlkit.rl.losses import RLData, VPGLoss, gaussian_log_prob, surrogate_loss, vpg_loss
from mamlkit.rl.policy import GaussianPolicy
from mamlkit.run.adapted import query_actions

GOAL, ALPHA, SUPPORT, QUERY, TASKS, GROUPS = 1.0, 0.01, 100, 100, 4000, 20


class Bandit(nn.Module):
    """``a ~ N(mu, sigma^2)`` whatever the observation: theta = (mu, log sigma)."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.log_std = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, obs):
        shape = (*obs.shape[:-1], 1)
        return self.mu.expand(shape), self.log_std.exp().expand(shape)


def expected_return(mu, log_std):
    return -((mu - GOAL) ** 2 + torch.exp(2 * log_std))


def bandit_data(mu, log_std, noise) -> RLData:
    """``noise [T, N]`` standard normal -> one-step episodes of T tasks with policies
    ``N(mu[t], exp(log_std[t])^2)``; advantages ``r - R(theta_t)``."""
    actions = (mu[:, None] + log_std.exp()[:, None] * noise)[..., None, None]
    advantages = -(actions[..., 0] - GOAL) ** 2 - expected_return(mu, log_std)[:, None, None]
    return RLData(torch.zeros_like(actions), actions, advantages, torch.ones_like(advantages))


def closed_form_meta_gradient() -> torch.Tensor:
    """Gradient of the outer loss ``-J`` at theta = 0 (see the module docstring)."""
    mu, s = (torch.zeros((), dtype=torch.float64, requires_grad=True) for _ in range(2))
    step = torch.autograd.grad(expected_return(mu, s), (mu, s), create_graph=True)
    after = expected_return(mu + ALPHA * step[0], s + ALPHA * step[1])
    return -torch.stack(torch.autograd.grad(after, (mu, s)))


def meta_gradient_estimates(estimator: str, first_order: bool = False) -> torch.Tensor:
    """The outer surrogate's gradient on ``GROUPS`` groups of tasks, ``[GROUPS, 2]``."""
    policy = Bandit()
    learner = MAML(policy, ALPHA, first_order=first_order, loss_fn=inner_loss(estimator))
    g = torch.Generator().manual_seed(0)
    zero = torch.zeros(TASKS, dtype=torch.float64)
    noise = torch.randn(TASKS, SUPPORT, generator=g, dtype=torch.float64)
    support = bandit_data(zero, zero, noise)
    adapted, _ = learner.adapted_params(StepData([support]))
    noise = torch.randn(TASKS, QUERY, generator=g, dtype=torch.float64)
    query = bandit_data(adapted["mu"][:, 0], adapted["log_std"][:, 0], noise)
    batch, size, rows = TaskBatch(StepData([support]), query, learner.loss_fn), TASKS // GROUPS, []
    for k in range(GROUPS):
        part = batch[k * size:(k + 1) * size]
        mean, std = learner.map_adapted(part, query_actions)
        logp = gaussian_log_prob(mean, std, part.query.actions)
        loss = surrogate_loss(logp, logp.detach(), part.query.advantages, part.query.mask)
        rows.append(torch.cat(torch.autograd.grad(loss, [policy.mu, policy.log_std])))
    return torch.stack(rows)


def test_dice_and_lvc_meta_gradients_match_the_closed_form_and_maml_misses_the_term():
    reference = closed_form_meta_gradient()
    means = {}
    for estimator in ("maml", "dice", "lvc"):
        rows = meta_gradient_estimates(estimator)
        means[estimator], error = rows.mean(0), rows.std(0) / GROUPS**0.5
        off = (means[estimator] - reference).abs() / error
        if estimator == "maml":
            assert off.max() > 10, (estimator, means[estimator], reference, error)
        else:
            assert (off < 4).all(), (estimator, means[estimator], reference, error)
    # horizon 1: DiCE's magic box is LVC's ratio
    torch.testing.assert_close(means["dice"], means["lvc"])


def test_first_order_is_the_same_for_every_estimator():
    """First order holds the inner gradient constant; all estimators share that gradient."""
    maml = meta_gradient_estimates("maml", first_order=True)
    for estimator in ("dice", "lvc"):
        torch.testing.assert_close(meta_gradient_estimates(estimator, True), maml)


def test_inner_hessians_are_unbiased_for_dice_and_lvc_and_not_for_maml():
    """``E[grad^2 L]`` over support batches against ``-grad^2 R = diag(2, 4 sigma^2)`` at
    theta = 0: exact in expectation for DiCE and LVC (horizon 1), not for REINFORCE."""
    policy, g = Bandit(), torch.Generator().manual_seed(1)
    zero = torch.zeros(TASKS, dtype=torch.float64)
    data = bandit_data(zero, zero, torch.randn(TASKS, 10, generator=g, dtype=torch.float64))
    params = dict(policy.named_parameters())
    exact = torch.diag(torch.tensor([2.0, 4.0], dtype=torch.float64))
    for estimator in ("maml", "dice", "lvc"):
        loss = inner_loss(estimator)

        def of(flat, task, loss=loss):
            p = {"mu": flat[:1], "log_std": flat[1:]}
            return loss(policy, p, {}, task)

        flat = torch.cat([params["mu"], params["log_std"]]).detach()
        hessians = torch.func.vmap(torch.func.hessian(of), in_dims=(None, 0))(flat, data)
        error = hessians.std(0) / TASKS**0.5
        off = ((hessians.mean(0) - exact).abs() / error.clamp_min(1e-12)).max()
        assert (off < 4) if estimator != "maml" else (off > 10), (estimator, hessians.mean(0))


def _per_step_scores(policy, data):
    """``grad log pi(a_t|s_t)`` of every step by autograd, ``[N, H, params]``."""
    names = [n for n, _ in policy.named_parameters()]

    def log_probs(*flat):
        mean, std = torch.func.functional_call(policy, dict(zip(names, flat, strict=True)),
                                                (data.observations,))
        return gaussian_log_prob(mean, std, data.actions)

    jac = torch.autograd.functional.jacobian(log_probs, tuple(policy.parameters()))
    return torch.cat([j.reshape(*data.mask.shape, -1) for j in jac], dim=-1)


def _hessian(loss_fn, policy, data):
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in policy.parameters()])

    def of(vector):
        parts, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            parts[name] = vector[start:start + shape.numel()].view(shape)
            start += shape.numel()
        mean, std = torch.func.functional_call(policy, parts, (data.observations,))
        return loss_fn(gaussian_log_prob(mean, std, data.actions), data.advantages, data.mask)

    return torch.func.grad(of)(flat), torch.func.hessian(of)(flat)


def test_dice_and_lvc_hessians_over_time_against_per_step_scores():
    """Horizon 5, one episode ended early: all three losses have REINFORCE's gradient; DiCE's
    Hessian adds ``-sum_{t,t'} s_t s_t'^T A_max(t,t') / steps``, LVC's only the ``t = t'``
    terms."""
    torch.manual_seed(0)
    policy = GaussianPolicy(2, 2, (4,), "tanh", init_std=0.8).double()
    g = torch.Generator().manual_seed(2)
    n, h = 4, 5
    mask = torch.ones(n, h, dtype=torch.float64)
    mask[0, 3:] = 0.0
    data = RLData(torch.randn(n, h, 2, generator=g, dtype=torch.float64),
                  torch.randn(n, h, 2, generator=g, dtype=torch.float64),
                  torch.randn(n, h, generator=g, dtype=torch.float64), mask)
    scores = _per_step_scores(policy, data) * mask[..., None]
    later = torch.maximum(torch.arange(h)[:, None], torch.arange(h)[None, :])
    adv_max = (data.advantages * mask)[:, later]  # [N, H, H]: A at max(t, t')
    steps = mask.sum()
    dice_term = torch.einsum("nti,nuj,ntu->ij", scores, scores, adv_max) / steps
    lvc_term = torch.einsum("nti,ntj,nt->ij", scores, scores, data.advantages * mask) / steps
    grad_vpg, hess_vpg = _hessian(vpg_loss, policy, data)
    for loss_fn, term in ((dice_loss, dice_term), (lvc_loss, lvc_term)):
        grad, hess = _hessian(loss_fn, policy, data)
        torch.testing.assert_close(grad, grad_vpg)
        torch.testing.assert_close(hess, hess_vpg - term)
    assert (dice_term - lvc_term).abs().max() > 1e-3  # the cross-time terms are there


@pytest.mark.parametrize("make", [
    lambda p, loss: MAML(p, 0.3, loss_fn=loss),
    lambda p, loss: MetaSGD(p, 0.3, loss_fn=loss),
    lambda p, loss: ANIL(p, 0.3, loss_fn=loss),
    lambda p, loss: MAMLpp(p, 0.3, 1, loss_fn=loss, msl_iterations=10),
])
def test_every_rl_learner_takes_the_estimator_through_its_one_inner_step(make):
    """Second order the estimators change the meta-gradient; the adapted policies (values)
    stay those of REINFORCE."""
    torch.manual_seed(0)
    policy = GaussianPolicy(2, 1, (4,), "tanh", init_std=0.8).double()
    g = torch.Generator().manual_seed(3)
    tasks, n, h = 3, 4, 5
    data = [RLData(torch.randn(tasks, n, h, 2, generator=g, dtype=torch.float64),
                   torch.randn(tasks, n, h, 1, generator=g, dtype=torch.float64),
                   torch.randn(tasks, n, h, generator=g, dtype=torch.float64),
                   torch.ones(tasks, n, h, dtype=torch.float64)) for _ in range(2)]
    results = {}
    for estimator in ("maml", "dice", "lvc"):
        learner = make(policy, inner_loss(estimator))
        batch = TaskBatch(StepData([data[0]]), data[1], learner.loss_fn)
        mean, std = learner.map_adapted(batch, query_actions)
        logp = gaussian_log_prob(mean, std, data[1].actions)
        loss = surrogate_loss(logp, logp.detach(), data[1].advantages, data[1].mask)
        grads = torch.autograd.grad(loss, list(learner.parameters()), allow_unused=True)
        results[estimator] = (mean.detach(), torch.cat([x.reshape(-1) for x in grads
                                                        if x is not None]))
    for estimator in ("dice", "lvc"):
        torch.testing.assert_close(results[estimator][0], results["maml"][0])
        assert (results[estimator][1] - results["maml"][1]).abs().max() > 1e-6


@pytest.mark.parametrize("estimator", ["dice", "lvc"])
def test_estimator_reaches_the_rl_step(tmp_path, estimator):
    """The config key chooses the RL tasks' inner loss, which the learner uses (resume with
    it is bit-exact: ``tests/test_run_rl.py``)."""
    from mamlkit.run import distributed
    from mamlkit.run.config import resolve
    from mamlkit.run.steps import RLStep

    step = RLStep(resolve("nav2d", {"estimator": estimator}), distributed.Context(), tmp_path)
    assert isinstance(step.tasks.loss, {"dice": DiCELoss, "lvc": LVCLoss}[estimator])
    assert step.learner.loss_fn is step.tasks.loss


def test_vpg_is_the_maml_estimator():
    assert isinstance(inner_loss("maml"), VPGLoss)
    with pytest.raises(ValueError, match="choose one of maml, dice, lvc"):
        inner_loss("e-maml")
