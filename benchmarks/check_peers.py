"""Check that the plain loop, learn2learn and higher give the same MAML meta-gradient.

A speed comparison is only fair if every path computes the same thing, so this runs one meta-step
of each in float64 on a tiny MLP and a tiny conv net with per-batch batch norm, at first and second
order with 1 and 3 inner steps, and compares each peer's ``.grad`` with the plain loop's.

Run: ``python benchmarks/check_peers.py`` (exit 1 if a difference exceeds the tolerance).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from peers import (
    LossFn,
    available_peers,
    higher_meta_loss,
    learn2learn_meta_loss,
    plain_loop_meta_loss,
)
from torch import Tensor, nn

TOLERANCE = 1e-8
MetaLossFn = Callable[..., Tensor]
Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def _mlp_case() -> tuple[nn.Module, Batch, LossFn]:
    """Sinusoid-style regression: 1-40-40-1 ReLU MLP, 4 tasks of 10 shots."""
    model = nn.Sequential(
        nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
    )
    x = torch.rand(4, 20, 1) * 10 - 5
    amplitude, phase = torch.rand(4, 1, 1) * 4.9 + 0.1, torch.rand(4, 1, 1) * torch.pi
    y = amplitude * torch.sin(x + phase)
    return model, (x[:, :10], y[:, :10], x[:, 10:], y[:, 10:]), F.mse_loss


def _conv_case() -> tuple[nn.Module, Batch, LossFn]:
    """3-way 2-shot image classification with ``BatchNorm2d(track_running_stats=False)``."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    x = torch.randn(4, 12, 1, 8, 8)
    y = torch.arange(3).repeat(4, 4)
    return model, (x[:, :6], y[:, :6], x[:, 6:], y[:, 6:]), F.cross_entropy


def _meta_grad(
    meta_loss: MetaLossFn,
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    steps: int,
    first_order: bool,
) -> list[Tensor]:
    """One meta-step's ``.grad`` of every parameter, from a clean slate."""
    model.zero_grad(set_to_none=True)
    meta_loss(model, *batch, 0.1, steps, first_order, loss_fn).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _max_abs_diff(a: list[Tensor], b: list[Tensor]) -> float:
    """Largest elementwise difference over all parameters."""
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def check_peers_agree() -> dict[str, float]:
    """Max abs meta-gradient difference from the plain loop, per case, order, steps and peer."""
    torch.manual_seed(0)
    peers = {"learn2learn": learn2learn_meta_loss, "higher": higher_meta_loss}
    status = available_peers()
    for name, reason in status.items():
        if reason is not None:
            print(f"skip {name}: {reason}")
            peers.pop(name)
    results: dict[str, float] = {}
    cases = {"mlp": _mlp_case(), "conv-bn": _conv_case()}
    for case, (model, batch, loss_fn) in cases.items():
        model.double().train()
        batch = tuple(t.double() if t.is_floating_point() else t for t in batch)
        for first_order in (False, True):
            for steps in (1, 3):
                ref = _meta_grad(plain_loop_meta_loss, model, batch, loss_fn, steps, first_order)
                label = f"{case} {'first' if first_order else 'second'}-order {steps}-step"
                if not first_order:
                    fo = _meta_grad(plain_loop_meta_loss, model, batch, loss_fn, steps, True)
                    results[f"{label} (plain: second vs first order)"] = _max_abs_diff(ref, fo)
                for name, meta_loss in peers.items():
                    grad = _meta_grad(meta_loss, model, batch, loss_fn, steps, first_order)
                    results[f"{label} {name}"] = _max_abs_diff(ref, grad)
    return results


def main() -> int:
    """Print every difference; fail if a peer is further than the tolerance from the loop."""
    results = check_peers_agree()
    worst = 0.0
    for label, diff in results.items():
        print(f"{label:60s} {diff:.3e}")
        if "vs first order" not in label:
            worst = max(worst, diff)
    ok = worst <= TOLERANCE
    print(f"max abs difference {worst:.3e}: {'OK' if ok else 'FAIL'} (tolerance {TOLERANCE:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
