"""functional.adapt (the one k-step loop, its step and InnerLoop) against independent computations:
a closed form, a hand-written autograd loop, finite differences."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mamlkit.functional.adapt import InnerLoop, LossSteps, adapt, inner_step, trajectory
from mamlkit.functional.task_batch import StepData
from mamlkit.models import mlp

D = torch.float64


def quadratic(params, data):
    """0.5 ||A w - b||^2: gradient A^T (A w - b), Hessian A^T A."""
    a, b = data
    return 0.5 * ((a @ params["w"] - b) ** 2).sum()


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(6, 3, generator=g, dtype=D), torch.randn(6, generator=g, dtype=D)
    return {"w": torch.randn(3, generator=g, dtype=D)}, (a, b)


def test_inner_step_is_the_closed_form_gradient_step():
    params, (a, b) = problem()
    stepped = inner_step(quadratic, params, (a, b), 0.1)
    expected = params["w"] - 0.1 * a.T @ (a @ params["w"] - b)
    torch.testing.assert_close(stepped["w"], expected, atol=1e-15, rtol=0)


def test_k_steps_are_k_closed_form_steps_with_per_step_rates():
    params, (a, b) = problem()
    rates = [0.05, 0.02, 0.01]
    w = params["w"]
    for lr in rates:
        w = w - lr * a.T @ (a @ w - b)
    adapted = adapt(quadratic, params, (a, b), InnerLoop(rates, 3))
    torch.testing.assert_close(adapted["w"], w, atol=1e-15, rtol=0)


def net_and_task(seed=0):
    torch.manual_seed(seed)
    model = mlp([2, 5, 1], activation=nn.Tanh).to(D)
    g = torch.Generator().manual_seed(seed)
    support = (torch.randn(4, 2, generator=g, dtype=D), torch.randn(4, 1, generator=g, dtype=D))
    query = (torch.randn(6, 2, generator=g, dtype=D), torch.randn(6, 1, generator=g, dtype=D))

    def loss(params, data):
        x, y = data
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    return model, loss, support, query


def hand_written(loss, params, support, rates, create_graph=True, names=None):
    """The unrolled loop in plain autograd: theta_{k+1} = theta_k - lr_k grad L(theta_k)."""
    fast = dict(params)
    for lr in rates:
        names_k = list(fast) if names is None else names
        grads = torch.autograd.grad(loss(fast, support), [fast[n] for n in names_k],
                                    create_graph=create_graph)
        fast = {**fast, **{n: fast[n] - lr * g for n, g in zip(names_k, grads, strict=True)}}
    return fast


@pytest.mark.parametrize("names", [None, ["2.weight", "2.bias"]])
def test_adapt_equals_a_hand_written_loop_and_its_second_order_gradient(names):
    model, loss, support, query = net_and_task()
    theta = dict(model.named_parameters())
    inner = InnerLoop([0.3, 0.1], 2, adapt_names=names)
    ours = adapt(loss, theta, support, inner)
    ref = hand_written(loss, theta, support, [0.3, 0.1], names=names)
    for n in theta:
        torch.testing.assert_close(ours[n], ref[n], atol=1e-15, rtol=0)
    grad = torch.autograd.grad(loss(ours, query), list(theta.values()))
    expected = torch.autograd.grad(loss(ref, query), list(theta.values()))
    for g, e in zip(grad, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=0)


def test_second_order_gradient_through_adapt_passes_finite_differences():
    model, loss, support, query = net_and_task(1)
    names = [n for n, _ in model.named_parameters()]

    def query_loss(*tensors):
        theta = dict(zip(names, tensors, strict=True))
        return loss(adapt(loss, theta, support, InnerLoop(0.2, 3)), query)

    leaves = [p.detach().clone().requires_grad_() for p in model.parameters()]
    assert torch.autograd.gradcheck(query_loss, leaves, eps=1e-6, atol=1e-8)


def test_first_order_treats_the_inner_gradients_as_constants():
    model, loss, support, query = net_and_task(2)
    theta = dict(model.named_parameters())
    adapted = adapt(loss, theta, support, InnerLoop(0.3, 2, first_order=True))
    grad = torch.autograd.grad(loss(adapted, query), list(theta.values()))
    at_adapted = {n: t.detach().requires_grad_() for n, t in adapted.items()}
    expected = torch.autograd.grad(loss(at_adapted, query), list(at_adapted.values()))
    for g, e in zip(grad, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-15, rtol=0)


def test_trajectory_walks_every_step_with_its_own_support_and_per_step_parameters():
    params, (a, b) = problem()
    _, (a2, b2) = problem(1)
    supports = [(a, b), (a2, b2), (a, b)]

    def shifted(p, data):
        x, y = data
        return 0.5 * ((x @ p["w"] + p["c"] - y) ** 2).sum()

    shift = [{"c": torch.tensor(float(k), dtype=D)} for k in range(2)]
    inner = InnerLoop(0.05, 3, adapt_names=["w"], per_step=shift)
    path = list(trajectory(LossSteps(shifted), params, StepData(supports), inner))
    assert len(path) == 4
    w = params["w"]
    for k, (x, y) in enumerate(supports):  # c of step k: the k-th set, the last one reused
        c = shift[min(k, 1)]["c"]
        assert path[k]["c"] is c
        w = w - 0.05 * x.T @ (x @ w + c - y)
        torch.testing.assert_close(path[k + 1]["w"], w, atol=1e-15, rtol=0)


def test_a_step_rule_replaces_the_gradient_step_and_inner_loop_is_frozen():
    params, data = problem()
    seen = []

    def halve(ops, p, support, k, inner):
        seen.append((k, inner.lr(k)))
        return {n: t / 2 for n, t in p.items()}

    adapted = adapt(quadratic, params, data, InnerLoop([0.1, 0.2], 2), step=halve)
    torch.testing.assert_close(adapted["w"], params["w"] / 4)
    assert seen == [(0, 0.1), (1, 0.2)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        InnerLoop(0.1, 1).steps = 2  # type: ignore[misc]
    assert InnerLoop(0.1, 1).but(steps=3) == InnerLoop(0.1, 3)
