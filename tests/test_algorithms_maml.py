"""The MAML learner (and what every learner shares) against independent computations."""

import pytest
import torch
from reference import meta_grad, plain_meta_loss
from torch import nn

from mamlkit import ANIL, IMAML, MAML, MAMLpp, MetaSGD, Reptile, Sinusoid, TaskBatch
from mamlkit import functional as MF
from mamlkit.algorithms import Pretrained
from mamlkit.models import Conv4, mlp


def tiny_mlp():
    return mlp([1, 8, 8, 1], activation=nn.Tanh).double()


def sinusoid_batch(tasks=3, shots=5, seed=0):
    b = Sinusoid(shots=shots).sample(tasks, seed)
    return TaskBatch(tuple(t.double() for t in b.support), tuple(t.double() for t in b.query))


def flat_meta_grad(learner, batch):
    return torch.cat([g.flatten() for g in meta_grad(learner.meta_loss(batch), learner.model)])


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(steps):
    model = tiny_mlp()
    learner = MAML(model, inner_lr=0.05, inner_steps=steps)
    batch = sinusoid_batch()
    analytic = flat_meta_grad(learner, batch)
    flat = nn.utils.parameters_to_vector(model.parameters()).detach()
    eps, numeric = 1e-6, torch.zeros_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            for sign in (1, -1):
                shifted = flat.clone()
                shifted[i] += sign * eps
                nn.utils.vector_to_parameters(shifted, model.parameters())
                numeric[i] += sign * learner.meta_loss(batch).item() / (2 * eps)
        nn.utils.vector_to_parameters(flat, model.parameters())
    assert torch.allclose(analytic, numeric, atol=1e-6, rtol=0)
    # the Hessian term matters here: first order differs from the true gradient
    learner.first_order = True
    assert (flat_meta_grad(learner, batch) - analytic).abs().max() > 1e-4


def test_linear_regression_closed_form():
    """f(x) = w.x with MSE: the meta-gradient is (I - a H_s) grad L_q(w'), H_s = 2/n Xs^T Xs."""
    d, n, alpha = 3, 6, 0.1
    model = nn.Linear(d, 1, bias=False).double()
    xs, xq = torch.randn(1, n, d, dtype=torch.double), torch.randn(1, n, d, dtype=torch.double)
    w_true = torch.randn(d, 1, dtype=torch.double)
    batch = TaskBatch((xs, xs @ w_true), (xq, xq @ w_true))
    (grad,) = meta_grad(MAML(model, alpha).meta_loss(batch), model)

    w = model.weight.detach().T
    Xs, Ys, Xq, Yq = xs[0], xs[0] @ w_true, xq[0], xq[0] @ w_true
    g_s = 2 / n * Xs.T @ (Xs @ w - Ys)
    w_adapted = w - alpha * g_s
    g_q = 2 / n * Xq.T @ (Xq @ w_adapted - Yq)
    expected = (torch.eye(d, dtype=torch.double) - alpha * 2 / n * Xs.T @ Xs) @ g_q
    assert torch.allclose(grad.T, expected, atol=1e-12)


def test_first_order_is_the_gradient_at_the_adapted_parameters():
    model = tiny_mlp()
    batch = sinusoid_batch(tasks=1)
    learner = MAML(model, inner_lr=0.05, inner_steps=1, first_order=True)
    fo = meta_grad(learner.meta_loss(batch), model)
    # independent: theta' = theta - a * stop_gradient(g); d L_q(theta') / d theta = grad at theta'
    adapted = {n: p.detach().requires_grad_() for n, p in
               learner.adapt(batch.support[0][0], batch.support[1][0]).items()}
    loss = MF.mse(torch.func.functional_call(model, adapted, (batch.query[0][0],)),
                  batch.query[1][0])
    expected = torch.autograd.grad(loss, list(adapted.values()))
    for a, b in zip(fo, expected, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching,chunk_size", [("vmap", None), ("vmap", 2), ("loop", None)])
def test_batched_equals_plain_loop(batching, chunk_size, first_order):
    model = tiny_mlp()
    batch = sinusoid_batch(tasks=5)
    learner = MAML(model, inner_lr=[0.05, 0.02], inner_steps=2, first_order=first_order,
                   batching=batching, chunk_size=chunk_size)
    ours = meta_grad(learner.meta_loss(batch), model)
    ref = meta_grad(plain_meta_loss(model, batch, MF.mse, [0.05, 0.02], 2, first_order), model)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_vmap_equals_loop_in_float32():
    model = mlp([1, 40, 40, 1])
    batch = Sinusoid(shots=10).sample(25, 1)
    grads = {}
    for batching in ("vmap", "loop"):
        learner = MAML(model, inner_lr=0.01, batching=batching)
        grads[batching] = meta_grad(learner.meta_loss(batch), model)
    for a, b in zip(grads["vmap"], grads["loop"], strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_zero_inner_lr_is_multi_task_training():
    model = tiny_mlp()
    batch = sinusoid_batch(tasks=4)
    ours = meta_grad(MAML(model, inner_lr=0.0).meta_loss(batch), model)
    joint = torch.stack([MF.mse(model(batch.query[0][i]), batch.query[1][i]) for i in range(4)])
    for a, b in zip(ours, meta_grad(joint.mean(), model), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_adapt_names_freeze_the_other_parameters():
    model = tiny_mlp()
    batch = sinusoid_batch(tasks=1)
    learner = MAML(model, inner_lr=0.1, adapt_names=["4.weight", "4.bias"])
    adapted = learner.adapt(batch.support[0][0], batch.support[1][0])
    for name, p in model.named_parameters():
        changed = not torch.equal(adapted[name], p)
        assert changed == name.startswith("4.")


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_conv4_with_batch_norm_matches_plain_loop_in_float64(batching):
    model = Conv4(ways=3, hidden=8).double()
    x = torch.rand(2, 6, 1, 28, 28, dtype=torch.double)
    y = torch.arange(3).repeat(2).expand(2, 6)
    batch = TaskBatch((x[:, :3], y[:, :3]), (x[:, 3:], y[:, 3:]))
    learner = MAML(model, inner_lr=0.4, inner_steps=2, loss_fn="cross_entropy",
                   batching=batching)
    ours = meta_grad(learner.meta_loss(batch), model)
    ref = meta_grad(plain_meta_loss(model, batch, MF.cross_entropy, 0.4, 2), model)
    for (name, _), a, b in zip(model.named_parameters(), ours, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-10), name


def test_task_batch_norm_matches_torch_batch_norm_in_training_mode():
    from mamlkit.models import TaskBatchNorm

    x = torch.randn(7, 4, 5, 5)
    ours, theirs = TaskBatchNorm(4), nn.BatchNorm2d(4, track_running_stats=False)
    with torch.no_grad():
        theirs.weight.uniform_(), theirs.bias.uniform_()
        ours.weight.copy_(theirs.weight), ours.bias.copy_(theirs.bias)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_adaptation_curve_agrees_with_adapt():
    model = tiny_mlp()
    batch = sinusoid_batch(tasks=3)
    learner = MAML(model, inner_lr=0.05)
    curve = learner.adaptation_curve(batch, steps=[0, 3, 1], metric="mse")
    assert curve.shape == (3, 3)
    for i in range(3):
        for row, steps in zip(curve, [0, 3, 1], strict=True):
            adapted = learner.adapt(batch.support[0][i], batch.support[1][i], steps=steps)
            expected = MF.mse(learner(batch.query[0][i], adapted), batch.query[1][i])
            assert torch.allclose(row[i], expected, atol=1e-12)


def test_per_step_rate_list_too_short_is_a_clear_error():
    learner = MAML(tiny_mlp(), inner_lr=[0.1], inner_steps=2)
    with pytest.raises(ValueError, match="no learning rate"):
        learner.meta_loss(sinusoid_batch(tasks=1))


LEARNERS = {  # every learner's constructor: model first, inner_lr and inner_steps by name
    "MAML": MAML, "ANIL": ANIL, "MAMLpp": MAMLpp, "MetaSGD": MetaSGD, "Reptile": Reptile,
    "IMAML": IMAML, "Pretrained": lambda model, **kw: Pretrained(model, 4, **kw),
}
BAD_RATES = [-1, -0.5, float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("inner_lr", BAD_RATES)
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_every_learner_refuses_a_negative_or_non_finite_inner_lr(learner, inner_lr):
    with pytest.raises(ValueError, match=r"^inner_lr must be a finite number >= 0 .*; got "):
        LEARNERS[learner](tiny_mlp(), inner_lr=inner_lr, inner_steps=2)


@pytest.mark.parametrize("bad", BAD_RATES)
@pytest.mark.parametrize("learner", sorted(set(LEARNERS) - {"MetaSGD"}))  # one number only
def test_every_learner_refuses_a_bad_per_step_rate(learner, bad):
    with pytest.raises(ValueError, match=r"^inner_lr\[1\] must be a finite number >= 0"):
        LEARNERS[learner](tiny_mlp(), inner_lr=[0.1, bad], inner_steps=2)


def test_bad_rates_in_tensors_and_dicts_and_of_the_wrong_type_are_refused():
    with pytest.raises(ValueError, match=r"^inner_lr\['0.weight'\] must hold finite numbers"):
        MAML(tiny_mlp(), inner_lr={"0.weight": torch.tensor([0.1, float("nan")])})
    with pytest.raises(ValueError, match=r"^inner_lr must hold finite numbers >= 0"):
        MAML(tiny_mlp(), inner_lr=torch.tensor(-0.1))
    with pytest.raises(TypeError, match=r"^inner_lr must be a number, .*; got str"):
        MAML(tiny_mlp(), inner_lr="0.1")


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_every_learner_accepts_a_zero_inner_lr(learner):
    """alpha = 0 is the pretrained baseline: plain multi-task training."""
    assert LEARNERS[learner](tiny_mlp(), inner_lr=0, inner_steps=1).inner_lr == 0
    assert LEARNERS[learner](tiny_mlp(), inner_lr=0.0, inner_steps=1).inner_lr == 0


@pytest.mark.parametrize("inner_steps,error", [(-3, ValueError), (1.5, TypeError),
                                               ("2", TypeError), (True, TypeError)])
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_every_learner_refuses_inner_steps_that_are_not_a_count(learner, inner_steps, error):
    with pytest.raises(error, match=r"^inner_steps must be an integer >= 0"):
        LEARNERS[learner](tiny_mlp(), inner_lr=0.1, inner_steps=inner_steps)


@pytest.mark.parametrize("steps,error", [(-3, ValueError), (1.5, TypeError)])
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_adapt_and_meta_loss_refuse_steps_that_are_not_a_count(learner, steps, error):
    model = tiny_mlp()
    learner = LEARNERS[learner](model, inner_lr=0.1, inner_steps=2)
    batch = sinusoid_batch(tasks=2)
    x, y = batch.support[0][0], batch.support[1][0]
    with pytest.raises(error, match=r"^steps must be an integer >= 0"):
        learner.adapt(x, y, steps=steps)
    with pytest.raises(error, match=r"^steps must be an integer >= 0"):
        learner.adapted_params(batch.support, steps=steps)
    with pytest.raises(error, match=r"^steps must be integers >= 0"):
        learner.adaptation_curve(batch, [0, steps], "mse")
    if not isinstance(learner, Pretrained):  # trains with pretrain_loss, not meta_loss
        with pytest.raises(error, match=r"^steps must be an integer >= 0"):
            learner.meta_loss(batch, steps=steps)


def test_adapt_refuses_a_bad_inner_lr_given_at_the_call():
    learner = MAML(tiny_mlp(), inner_lr=0.1)
    batch = sinusoid_batch(tasks=2)
    with pytest.raises(ValueError, match=r"^inner_lr must be a finite number >= 0"):
        learner.adapt(batch.support[0][0], batch.support[1][0], inner_lr=float("nan"))
    with pytest.raises(ValueError, match=r"^inner_lr must be a finite number >= 0"):
        learner.adaptation_curve(batch, [0, 1], "mse", inner_lr=-0.1)
    with pytest.raises(ValueError, match=r"^steps must hold at least one"):
        learner.adaptation_curve(batch, [], "mse")
