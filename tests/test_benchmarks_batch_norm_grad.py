"""benchmarks/batch_norm_grad.py: its two variants are the two derivatives, and they agree."""

import torch
from benchmark_scripts import load_benchmark

from mamlkit.functional import batch_norm as closed_form
from mamlkit.models import task_conv

batch_norm_grad = load_benchmark("batch_norm_grad")


def test_the_torch_variant_swaps_the_second_derivative_and_puts_it_back():
    with batch_norm_grad.variant("torch"):
        assert task_conv.batch_norm is not closed_form.batch_norm
    assert task_conv.batch_norm is closed_form.batch_norm


def test_both_variants_give_the_same_meta_gradient(monkeypatch):
    # 3-way 2-shot, 2 queries, 2 tasks, 2 inner steps: a second-order meta-step in seconds
    monkeypatch.setitem(batch_norm_grad.WORKLOADS, "tiny", (3, 2, 2, 2, 2, 0.1))
    assert batch_norm_grad.agreement("tiny", torch.float64) < 1e-12
    assert batch_norm_grad.agreement("tiny", torch.float32) < 1e-4
