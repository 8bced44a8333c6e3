"""TRPO's Gauss-Newton product J^T M J against the KL's Hessian by reverse-over-reverse (the
independent computation): the same matrix at the old policy, through the inner adaptation, for
every estimator, first and second order, on a task subsample and across (emulated) ranks."""

import copy
import threading

import pytest
import torch

from mamlkit import MAML
from mamlkit.envs import make_batch_env
from mamlkit.functional.flat import flat
from mamlkit.rl.estimators import inner_loss
from mamlkit.rl.losses import (
    gaussian_kl,
    gaussian_kl_curvature,
    gaussian_log_prob,
    masked_mean,
    masked_mean_weights,
    surrogate_loss,
)
from mamlkit.rl.outer import OuterSettings, outer_step
from mamlkit.rl.policy import GaussianPolicy
from mamlkit.rl.trpo import (
    GaussNewton,
    _gauss_newton_operator,
    gauss_newton_vector_product,
    hessian_vector_product,
    no_reduction,
    trpo_step,
)
from mamlkit.run.adapted import adapted_policy, query_actions
from mamlkit.tasks import RLTasks


def nav2d_problem(estimator: str, first_order: bool, steps: int = 1, tasks: int = 3):
    """A learner and a sampled nav2d meta-batch (4 trajectories, H = 10, hidden [8]) in
    float64, so that the two products can be compared to rounding."""
    torch.manual_seed(0)
    rl_tasks = RLTasks(make_batch_env("nav2d", horizon=10), trajectories=4,
                       loss=inner_loss(estimator))
    policy = GaussianPolicy(2, 2, (8,), "relu", min_std=0.1)
    learner = MAML(policy, 0.1, inner_steps=steps, first_order=first_order,
                   loss_fn=inner_loss(estimator))
    g = torch.Generator().manual_seed(1)
    rl = rl_tasks.collect(rl_tasks.sample_tasks(tasks, g), g, adapted_policy(learner), steps)
    learner.double()
    return learner, rl.tasks.to(torch.float64)


def distribution(learner, batch):
    return lambda k: learner.map_adapted(batch if k is None else batch[:k], query_actions)


def products(learner, batch, k=None, damping=0.0):
    """(Gauss-Newton, Hessian) products of the KL of the first ``k`` tasks at the old policy."""
    dist, params = distribution(learner, batch), list(learner.parameters())
    mask = batch.query.mask[:k] if k is not None else batch.query.mask
    with torch.no_grad():
        old_mean, old_std = dist(k)

    def kl():
        mean, std = dist(k)
        return masked_mean(gaussian_kl(old_mean, old_std, mean, std), mask)

    curvature = gaussian_kl_curvature(old_std, masked_mean_weights(mask))
    return (gauss_newton_vector_product(GaussNewton(lambda: dist(k), curvature), params,
                                        damping),
            hessian_vector_product(kl, params, damping))


def assert_same_products(gn, hessian, size, count=3, rtol=1e-9):
    g = torch.Generator().manual_seed(7)
    for _ in range(count):
        v = torch.randn(size, generator=g, dtype=torch.float64)
        want = hessian(v)
        got = gn(v)
        assert want.norm() > 0
        assert (got - want).norm() <= rtol * want.norm(), (got - want).norm() / want.norm()


@pytest.mark.parametrize("estimator", ["maml", "dice", "lvc"])
@pytest.mark.parametrize("first_order", [False, True])
def test_gauss_newton_product_is_the_kl_hessian_product(estimator, first_order):
    learner, batch = nav2d_problem(estimator, first_order)
    size = sum(p.numel() for p in learner.parameters())
    gn, hessian = products(learner, batch, damping=1e-3)
    assert_same_products(gn, hessian, size)
    gn, hessian = products(learner, batch, k=2)  # the subsample's KL
    assert_same_products(gn, hessian, size)


def test_gauss_newton_product_through_two_inner_steps():
    learner, batch = nav2d_problem("maml", False, steps=2)
    gn, hessian = products(learner, batch)
    assert_same_products(gn, hessian, sum(p.numel() for p in learner.parameters()))


def test_the_estimator_changes_the_second_order_product():
    """The KL sees the estimator through the inner gradient's Jacobian: the products of maml
    and dice differ at second order (so the tests above compare different matrices)."""
    v = None
    results = []
    for estimator in ("maml", "dice"):
        learner, batch = nav2d_problem(estimator, False)
        gn, _ = products(learner, batch)
        if v is None:
            size = sum(p.numel() for p in learner.parameters())
            v = torch.randn(size, generator=torch.Generator().manual_seed(3),
                            dtype=torch.float64)
        results.append(gn(v))
    assert (results[0] - results[1]).norm() > 1e-6 * results[0].norm()


def _step(learner, batch, settings, **kwargs):
    """The parameter change of one TRPO outer step, and its statistics."""
    before = flat([p.detach().clone() for p in learner.parameters()])
    stats = outer_step(list(learner.parameters()), distribution(learner, batch), batch.query,
                       settings, **kwargs)
    return flat([p.detach() for p in learner.parameters()]) - before, stats


@pytest.mark.parametrize("first_order,subsample", [(False, 1.0), (True, 1.0), (False, 0.67)])
def test_trpo_steps_with_either_product_agree(first_order, subsample):
    learner, batch = nav2d_problem("dice", first_order)
    twin = copy.deepcopy(learner)
    steps = {}
    for product, model in (("hessian", learner), ("gauss_newton", twin)):
        settings = OuterSettings("trpo", cg_subsample=subsample, fisher_product=product)
        steps[product] = _step(model, batch, settings)
    (want, want_stats), (got, got_stats) = steps["hessian"], steps["gauss_newton"]
    assert want_stats.accepted and got_stats.step_fraction == want_stats.step_fraction
    # the products agree to 1e-9 (above); ten CG iterations on this H (condition number ~1e7:
    # ReLU units dead on these few states, damping 1e-5) magnify their rounding to ~1e-7
    assert want.norm() > 0 and (got - want).norm() <= 1e-6 * want.norm()
    assert got_stats.kl == pytest.approx(want_stats.kl, rel=1e-6)


class _Ranks:
    """An all-reduce sum between threads, as ``distributed.all_sum`` between processes."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.slots: list[torch.Tensor | None] = [None] * world

    def reduce_for(self, rank: int):
        def reduce(tensor: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = tensor.detach().clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()
            return total

        return reduce


@pytest.mark.parametrize("subsample", [1.0, 0.67, 0.34])
def test_gauss_newton_step_of_two_ranks_is_the_hessian_step_of_one(subsample):
    """Tasks split 2 + 1 between two ranks: each holds its share of the KL (and, subsampled,
    maybe none of it), and the summed products give one process's step. 0.34 leaves rank 1
    without a subsampled task."""
    learner, batch = nav2d_problem("maml", False)
    settings = OuterSettings("trpo", cg_subsample=subsample)
    want, _ = _step(copy.deepcopy(learner), batch,
                    OuterSettings("trpo", cg_subsample=subsample, fisher_product="hessian"))
    ranks, shares = _Ranks(2), [slice(0, 2), slice(2, 3)]
    results: list = [None, None]

    def run(rank: int) -> None:
        try:
            results[rank] = _step(copy.deepcopy(learner), batch[shares[rank]], settings,
                                  reduce=ranks.reduce_for(rank), world_size=2,
                                  task_slice=shares[rank], num_tasks=3)[0]
        except BaseException as error:  # reported below; the other rank times out
            ranks.barrier.abort()
            results[rank] = error

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        assert isinstance(got, torch.Tensor), got
        assert (got - want).norm() <= 1e-6 * want.norm()


def test_unknown_fisher_product_is_refused():
    learner, batch = nav2d_problem("maml", True)
    with pytest.raises(ValueError, match="fisher_product"):
        _step(learner, batch, OuterSettings("trpo", fisher_product="newton"))


def test_quadratic_form_from_jv_alone_is_v_dot_hv():
    learner, batch = nav2d_problem("lvc", False)
    dist, params = distribution(learner, batch), list(learner.parameters())
    with torch.no_grad():
        _, old_std = dist(None)
    curvature = GaussNewton(lambda: dist(None),
                            gaussian_kl_curvature(old_std, masked_mean_weights(batch.query.mask)))
    matvec, quadratic = _gauss_newton_operator(curvature, params, 1e-3, no_reduction)
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)
    assert quadratic(v).item() == pytest.approx(v.dot(matvec(v)).item(), rel=1e-12)


def test_line_search_from_one_evaluation_takes_the_same_step_bit_for_bit():
    """``loss_and_kl`` (one pass through the adaptation per fraction) against the separate
    surrogate and KL closures: the same arithmetic, so the same bits."""
    learner, batch = nav2d_problem("maml", False)
    twin = copy.deepcopy(learner)
    dist, params = distribution(learner, batch), list(learner.parameters())
    with torch.no_grad():
        old_mean, old_std = dist(None)
    query = batch.query
    old_log_probs = gaussian_log_prob(old_mean, old_std, query.actions).detach()

    def closures(model):
        d = distribution(model, batch)

        def surrogate(mean, std):
            return surrogate_loss(gaussian_log_prob(mean, std, query.actions), old_log_probs,
                                  query.advantages, query.mask)

        def kl(mean, std):
            return masked_mean(gaussian_kl(old_mean, old_std, mean, std), query.mask)

        return (lambda: surrogate(*d(None)), lambda: kl(*d(None)),
                lambda: (lambda m, s: (surrogate(m, s), kl(m, s)))(*d(None)))

    loss_fn, kl_fn, _ = closures(learner)
    a = trpo_step(params, loss_fn, kl_fn, max_kl=1e-4)
    loss_fn, kl_fn, both = closures(twin)
    b = trpo_step(list(twin.parameters()), loss_fn, kl_fn, max_kl=1e-4, loss_and_kl=both)
    assert a == b and a.accepted and a.step_fraction < 1.0  # it backtracked at least once
    assert all(torch.equal(p, q) for p, q in zip(learner.parameters(), twin.parameters(),
                                                  strict=True))


def test_outputs_with_a_graph_are_the_no_grad_outputs_bit_for_bit():
    """What lets the TRPO step take the old policy, the surrogate and H from one pass."""
    learner, batch = nav2d_problem("dice", False)
    dist = distribution(learner, batch)
    with torch.no_grad():
        plain = dist(None)
    for a, b in zip(dist(None), plain, strict=True):
        assert a.requires_grad and torch.equal(a.detach(), b)
