"""Blocks that run on one torch thread: the linear baseline's batched solve at the ant's size
(MKL's threaded batched LU fails there) and sampling; the run's count comes back after."""

import torch

from mamlkit.rl import fit_linear
from mamlkit.rl.threads import one_torch_thread


def test_the_baseline_solves_the_ants_systems_with_two_threads_as_with_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 400, 214, generator=g)  # 2 x 105 observation features + 4: the ant's
    x[..., 100:150] = 0.0  # contact forces that stayed zero
    y = torch.randn(3, 400, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fit_linear(x, y)
        torch.set_num_threads(2)
        two = fit_linear(x, y)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # the Gram products run on the run's threads: equal up to their rounding
    assert torch.isfinite(two).all() and torch.allclose(one, two, rtol=1e-8, atol=1e-10)
    xd, yd = x.double(), y.double()  # the ridge normal equations hold
    gram = xd.transpose(-1, -2) @ xd + 1e-5 * torch.eye(214, dtype=torch.float64)
    rhs = xd.transpose(-1, -2) @ yd.unsqueeze(-1)
    assert torch.allclose(gram @ two.unsqueeze(-1), rhs, rtol=1e-6, atol=1e-6)


def test_the_thread_count_comes_back_after_an_error():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        try:
            with one_torch_thread():
                assert torch.get_num_threads() == 1
                raise KeyError("inside")
        except KeyError:
            pass
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

