"""Learned step sizes asked for more inner steps than they were trained for: the trained steps
as in meta-training, then safeguarded steps that never raise the support loss (no NaN)."""

import pytest
import torch
from test_algorithms_family import bn_mlp, conv_batch, sinusoid_batch, tiny_mlp
from torch import nn

from mamlkit import MAML, MAMLpp, MetaSGD
from mamlkit.functional import mse
from mamlkit.functional.batching import TaskOps
from mamlkit.functional.safeguard import BACKTRACK, safeguarded_step
from mamlkit.functional.task_loss import as_task_loss
from mamlkit.models import Conv4


def overshooting_metasgd(rate=2.0):
    """Meta-SGD whose learned rates are far too large to be repeated: plain reuse blows up."""
    learner = MetaSGD(tiny_mlp(), 0.01)
    with torch.no_grad():
        for r in learner.lrs.values():
            r.fill_(rate)
    return learner


def test_safeguarded_step_is_the_longest_halving_that_lowers_the_support_loss():
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = 3 * torch.randn(8, 2, dtype=torch.double)
    support = (x, x @ torch.tensor([[1.0], [-2.0]], dtype=torch.double))
    ops = TaskOps(model, {}, as_task_loss("mse"))
    for lr in (1e-3, 0.4, 50.0):  # a plain step, one that overshoots, one no halving rescues
        grads = torch.func.grad(lambda p: ops.value(p, support))(params)
        start, expected = ops.value(params, support), params
        for fraction in BACKTRACK:
            trial = {n: params[n] - fraction * lr * grads[n] for n in params}
            if ops.value(trial, support) < start:
                expected = trial
                break
        got = safeguarded_step(ops, params, support, lr)
        for n in params:
            torch.testing.assert_close(got[n], expected[n], atol=1e-12, rtol=0)
        assert ops.value(got, support) <= start
    assert all(torch.equal(got[n], params[n]) for n in params)  # lr 50: no step at all


def test_metasgd_beyond_its_trained_step_stays_finite_and_keeps_the_trained_step():
    batch = sinusoid_batch(tasks=4, shots=10)
    learner = overshooting_metasgd()
    plain = MAML.adaptation_curve(learner, batch, [1, 10], "mse")  # rates reused unguarded
    assert not torch.isfinite(plain[1]).all() or plain[1].max() > 1e6
    curve = learner.adaptation_curve(batch, [0, 1, 2, 5, 10], "mse")
    assert torch.isfinite(curve).all()
    torch.testing.assert_close(curve[1], plain[0])  # the trained step is untouched
    (sx, sy), (qx, qy) = batch.support, batch.query
    support_losses = []
    for steps in (1, 2, 5, 10):
        adapted = learner.adapt(sx[0], sy[0], steps=steps)
        support_losses.append(mse(learner(sx[0], adapted), sy[0]).item())
    torch.testing.assert_close(mse(learner(qx[0], adapted), qy[0]), curve[4, 0])
    assert support_losses == sorted(support_losses, reverse=True)  # never up after step 1


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_mamlpp_reuses_its_last_rates_and_batch_norm_weights_safeguarded(batching):
    torch.manual_seed(0)
    learner = MAMLpp(bn_mlp(), 0.01, 2, batching=batching)
    with torch.no_grad():
        for r in learner.lslr_rates.values():
            r.copy_(torch.tensor([0.05, 3.0], dtype=r.dtype))  # the last step's rate overshoots
    batch = sinusoid_batch(tasks=3, shots=10)
    curve = learner.adaptation_curve(batch, [1, 2, 10], "mse")
    plain = MAML.adaptation_curve(learner, batch, [1, 2, 10], "mse")
    torch.testing.assert_close(curve[:2], plain[:2])  # the trained steps
    assert torch.isfinite(curve).all() and not (plain[2] < 1e3).all()


def test_safeguarded_steps_on_stacked_conv4_match_the_loop():
    batch = conv_batch()
    torch.manual_seed(0)
    stacked = MetaSGD(Conv4(3, hidden=4).double(), 0.5, 1, loss_fn="cross_entropy")
    assert stacked.batching.kind == "stacked"
    looped = MetaSGD(Conv4(3, hidden=4).double(), 0.5, 1, loss_fn="cross_entropy",
                     batching="loop")
    looped.load_state_dict(stacked.state_dict())
    torch.testing.assert_close(stacked.adaptation_curve(batch, [1, 4], "cross_entropy"),
                               looped.adaptation_curve(batch, [1, 4], "cross_entropy"),
                               atol=1e-10, rtol=0)
