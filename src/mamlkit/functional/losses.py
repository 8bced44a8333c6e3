"""Task losses and evaluation metrics, addressable by name from configs."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error: the loss of H = 1 regression tasks."""
    return F.mse_loss(prediction, target)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy: the loss of N-way classification tasks."""
    return F.cross_entropy(logits, target)


def accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """Fraction of correct argmax predictions."""
    return (logits.argmax(dim=-1) == target).to(logits.dtype).mean()


LOSSES: dict[str, LossFn] = {"mse": mse, "cross_entropy": cross_entropy}
METRICS: dict[str, LossFn] = {"mse": mse, "accuracy": accuracy, "cross_entropy": cross_entropy}


def resolve_loss(loss: str | LossFn) -> LossFn:
    """A loss callable from its name (``"mse"``, ``"cross_entropy"``) or the callable itself."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"Unknown loss {loss!r}; choose one of {sorted(LOSSES)}.") from None


def resolve_metric(metric: str | LossFn) -> LossFn:
    if callable(metric):
        return metric
    try:
        return METRICS[metric]
    except KeyError:
        raise ValueError(f"Unknown metric {metric!r}; choose one of {sorted(METRICS)}.") from None


__all__ = ["LossFn", "accuracy", "cross_entropy", "mse", "resolve_loss", "resolve_metric"]
