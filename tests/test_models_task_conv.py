"""Task-stacked batching of Conv4 (the default for it) against the plain autograd loop."""

import pytest
import torch
import torch.nn.functional as F
from benchmark_scripts import load_benchmark
from reference import meta_grad, plain_meta_loss
from torch import nn

from mamlkit import MAML, TaskBatch
from mamlkit import functional as MF
from mamlkit.algorithms import choose_batching
from mamlkit.models import Conv4, TaskBatchNorm, mlp, stacked_forward
from mamlkit.models.stacking import stacker
from mamlkit.models.task_conv import stacked_batch_norm, stacked_conv2d, tasks_to_channels


def omniglot_like(tasks=5, support=3, query=18, ways=3):
    x = torch.rand(tasks, support + query, 1, 28, 28, dtype=torch.double)
    y = torch.arange(ways).repeat((support + query) // ways + 1)[: support + query]
    y = y.expand(tasks, -1).clone()
    return TaskBatch((x[:, :support], y[:, :support]), (x[:, support:], y[:, support:]))


def assert_same_grads(ours, ref, names, tol=1e-9):
    scale = max(g.abs().max() for g in ref)
    for name, a, b in zip(names, ours, ref, strict=True):
        assert (a - b).abs().max() / scale < tol, name


def test_conv4_gets_stacked_and_other_models_keep_their_batching():
    assert choose_batching(Conv4(ways=5), stacker) == "stacked"
    assert choose_batching(Conv4(ways=5)) == "loop"  # no way to stack it given
    user_conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    assert choose_batching(user_conv) == "loop"
    assert choose_batching(mlp([1, 8, 1])) == "vmap"
    with pytest.raises(ValueError, match="does not support batching='stacked'"):
        MAML(user_conv, 0.1, batching="stacked")


@pytest.mark.parametrize("max_pool", [False, True])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_conv4_meta_gradient_matches_plain_loop_in_float64(steps, first_order, max_pool):
    """5 tasks in chunks of 4 (uneven on purpose), batch norm with each task's statistics;
    18 query images take the channels-last layout, 3 support images NCHW."""
    model = Conv4(ways=3, hidden=8, max_pool=max_pool).double()
    batch = omniglot_like()
    learner = MAML(model, 0.4, steps, first_order, loss_fn="cross_entropy")
    assert learner.batching.kind == "stacked"
    ours = meta_grad(learner.meta_loss(batch), model)
    ref = meta_grad(plain_meta_loss(model, batch, MF.cross_entropy, 0.4, steps, first_order),
                    model)
    assert_same_grads(ours, ref, [n for n, _ in model.named_parameters()])


@pytest.mark.parametrize("chunk_size", [1, 2, 32])
def test_chunk_size_does_not_change_the_meta_gradient(chunk_size):
    model = Conv4(ways=3, hidden=8).double()
    batch = omniglot_like()
    ref = meta_grad(plain_meta_loss(model, batch, MF.cross_entropy, 0.4, 1), model)
    learner = MAML(model, 0.4, 1, loss_fn="cross_entropy", chunk_size=chunk_size)
    assert_same_grads(meta_grad(learner.meta_loss(batch), model), ref,
                      [n for n, _ in model.named_parameters()])


def test_per_step_rates_adapt_names_and_frozen_parameters_agree_with_the_loop():
    model = Conv4(ways=3, hidden=8).double()
    model.features[1].weight.requires_grad_(False)  # frozen, but still adapted in the inner loop
    batch = omniglot_like(tasks=3)
    for kwargs in ({"inner_lr": [0.3, 0.1], "inner_steps": 2},
                   {"inner_lr": 0.5, "inner_steps": 2, "adapt_names": ["head.weight",
                                                                       "head.bias"]}):
        losses, grads = {}, {}
        for batching in ("stacked", "loop"):
            learner = MAML(model, loss_fn="cross_entropy", batching=batching, **kwargs)
            losses[batching] = learner.meta_loss(batch)
            grads[batching] = torch.autograd.grad(
                losses[batching], [p for p in model.parameters() if p.requires_grad])
        assert torch.allclose(losses["stacked"], losses["loop"], rtol=0, atol=1e-12)
        assert_same_grads(grads["stacked"], grads["loop"], range(len(grads["loop"])))


def test_meta_loss_under_no_grad_and_adaptation_curve_agree_with_the_loop():
    model = Conv4(ways=3, hidden=8).double()
    batch = omniglot_like()
    stacked = MAML(model, 0.4, 2, loss_fn="cross_entropy")
    loop = MAML(model, 0.4, 2, loss_fn="cross_entropy", batching="loop")
    with torch.no_grad():
        assert torch.allclose(stacked.meta_loss(batch), loop.meta_loss(batch), atol=1e-12)
    for metric in ("accuracy", "cross_entropy"):
        ours = stacked.adaptation_curve(batch, [0, 2, 1], metric)
        assert ours.shape == (3, 5)
        assert torch.allclose(ours, loop.adaptation_curve(batch, [0, 2, 1], metric), atol=1e-12)


@pytest.mark.parametrize("channels_last", [True, False])
def test_stacked_layers_equal_each_tasks_own_layers(channels_last):
    tasks, n, c, o = 3, 4, 2, 5
    x = torch.randn(tasks, n, c, 9, 9, dtype=torch.double)
    w = torch.randn(tasks, o, c, 3, 3, dtype=torch.double)
    b = torch.randn(tasks, o, dtype=torch.double)
    stacked = tasks_to_channels(x, channels_last)
    assert stacked.is_contiguous(memory_format=torch.channels_last) == channels_last
    out = stacked_conv2d(stacked, w, b, stride=2, padding=1)
    out = out.reshape(n, tasks, o, 5, 5).transpose(0, 1)
    for t in range(tasks):
        expected = F.conv2d(x[t], w[t], b[t], stride=2, padding=1)
        assert torch.allclose(out[t], expected, rtol=0, atol=1e-12)

    gamma = torch.rand(tasks, c, dtype=torch.double)
    beta = torch.randn(tasks, c, dtype=torch.double)
    normed = stacked_batch_norm(stacked, gamma, beta, eps=1e-5)
    normed = normed.reshape(n, tasks, c, 9, 9).transpose(0, 1)
    bn = TaskBatchNorm(c).double()
    for t in range(tasks):
        with torch.no_grad():
            bn.weight.copy_(gamma[t]), bn.bias.copy_(beta[t])
            assert torch.allclose(normed[t], bn(x[t]), rtol=0, atol=1e-12)


def test_stacked_conv4_forward_equals_each_tasks_forward():
    model = Conv4(ways=4, hidden=6).double()
    params = {k: torch.stack([v + 0.1 * t for t in range(3)]) for k, v in model.named_parameters()}
    x = torch.randn(3, 7, 1, 28, 28, dtype=torch.double)
    out = stacked_forward(model, params, {}, x)
    assert out.shape == (3, 7, 4)
    for t in range(3):
        own = {k: v[t] for k, v in params.items()}
        expected = torch.func.functional_call(model, own, (x[t],))
        assert torch.allclose(out[t], expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="3 tasks needs input"):
        stacked_forward(model, params, {}, x[0])


def test_unfold_conv_of_the_study_equals_conv2d():
    """benchmarks/conv_batching.py's im2col convolution (idea e) is the same function."""
    conv = load_benchmark("conv_batching").UnfoldConv2d(3, 5, 3, stride=2, padding=1).double()
    x = torch.randn(4, 3, 11, 11, dtype=torch.double)
    expected = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    assert torch.allclose(conv(x), expected, rtol=0, atol=1e-12)
