"""What every report says of per-task values: the mean with its 95% confidence interval, and
the values themselves, rounded, in the order every run sees its tasks."""

from __future__ import annotations

import math

import torch


def mean_ci95(values: torch.Tensor) -> dict[str, float]:
    """The mean and 1.96 standard errors over the values (0 for a single value)."""
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return {"mean": values.mean().item(), "ci95": 1.96 * std / math.sqrt(n)}


def task_values(values: torch.Tensor) -> list[float]:
    """One number per held-out task, in the order every run sees them (6 decimals)."""
    return [round(v, 6) for v in values.double().tolist()]


__all__ = ["mean_ci95", "task_values"]
