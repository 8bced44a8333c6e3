"""functional.batch_norm: the closed-form second derivative against finite differences and
against torch's own batch norm (autograd's ``batchnorm_double_backward``)."""

import pytest
import torch
import torch.nn.functional as F

from mamlkit.functional.batch_norm import batch_norm

SHAPES = [(6, 3, 5, 5), (4, 2, 7), (5, 4)]


def inputs(shape, dtype=torch.float64, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape[1], generator=g, dtype=dtype)
    b = torch.randn(shape[1], generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, w, b)]


def torch_batch_norm(x, w, b, eps=1e-5):
    return F.batch_norm(x, None, None, w, b, True, 0.0, eps)


def ours(x, w, b, eps=1e-5):
    return batch_norm(x, w, b, eps)


@pytest.mark.parametrize("shape", SHAPES)
def test_first_and_second_derivatives_against_finite_differences(shape):
    x, w, b = inputs(shape)
    assert torch.autograd.gradcheck(ours, (x, w, b))
    assert torch.autograd.gradgradcheck(ours, (x, w, b))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("uses", ["all", "dx", "dweight", "dbias", "dweight+dbias"])
def test_second_order_matches_torch(uses, channels_last):
    """A second-order quantity of the kind MAML builds: a function of the first derivatives,
    differentiated again, each first derivative used or not."""
    shape = (6, 3, 4, 4)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(shape, generator=g, dtype=torch.float64)

    def second(fn):
        x, w, b = inputs(shape, channels_last=channels_last)
        y = fn(x, w, b)
        dx, dw, db = torch.autograd.grad((y * v).sum() + (y ** 3).sum(), (x, w, b),
                                         create_graph=True)
        terms = {"dx": dx.sin().sum(), "dweight": (dw ** 2).sum(), "dbias": (db * 3.0).sum()}
        chosen = terms if uses == "all" else {k: terms[k] for k in uses.split("+")}
        return torch.autograd.grad(sum(chosen.values()), (x, w, b), allow_unused=True)

    for expected, got in zip(second(torch_batch_norm), second(ours), strict=True):
        if expected is None:
            assert got is None or torch.count_nonzero(got) == 0
        else:
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_third_order_matches_torch():
    """create_graph through the second derivative: autograd differentiates the closed form."""
    def third(fn):
        x, w, b = inputs((5, 2, 3, 3))
        y = fn(x, w, b)
        (dx,) = torch.autograd.grad(y.sin().sum(), x, create_graph=True)
        hx, hw = torch.autograd.grad(dx.cos().sum(), (x, w), create_graph=True)
        return torch.autograd.grad(hx.sin().sum() + hw.cos().sum(), (x, w, b))

    for expected, got in zip(third(torch_batch_norm), third(ours), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_and_first_derivative_are_torchs_bits(channels_last):
    """Evaluation adapts with first derivatives only: those are the same kernels, the same bits."""
    x, w, b = inputs((8, 4, 6, 6), dtype=torch.float32, channels_last=channels_last)
    g = torch.randn(8, 4, 6, 6)
    expected_y = torch_batch_norm(x, w, b)
    got_y = ours(x, w, b)
    assert torch.equal(got_y, expected_y)
    for e, o in zip(torch.autograd.grad(expected_y, (x, w, b), g),
                    torch.autograd.grad(got_y, (x, w, b), g), strict=True):
        assert torch.equal(o, e)


def test_torch_func_transforms_take_it():
    """grad of grad and vmap, as mamlkit's vmap and loop batchings use them, against torch's."""
    x, w, b = (t.detach() for t in inputs((5, 3, 4, 4)))

    def second(fn):
        def inner(w):
            return torch.func.grad(lambda w: fn(x, w, b).sin().sum())(w).cos().sum()
        return torch.func.grad(inner)(w)

    torch.testing.assert_close(second(ours), second(torch_batch_norm), rtol=1e-9, atol=1e-10)
    xs = torch.stack([x, x.flip(0)])
    torch.testing.assert_close(torch.func.vmap(lambda x: ours(x, w, b))(xs),
                               torch.func.vmap(lambda x: torch_batch_norm(x, w, b))(xs))
