"""Task losses and evaluation metrics, addressable by name from configs."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def _shapes(a: Tensor) -> str:
    return str(list(a.shape))


def _dtype(a: Tensor) -> str:
    return str(a.dtype).removeprefix("torch.")


def mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error: the loss of H = 1 regression tasks.

    Shapes must match: ``[N, 1]`` against ``[N]`` would broadcast to an N x N loss.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"The model's prediction has shape {_shapes(prediction)} but the "
                         f"target {_shapes(target)}; for MSE they must match (reshape the "
                         "targets or the model's output).")
    return F.mse_loss(prediction, target)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy: the loss of N-way classification tasks (integer labels ``[N]``
    against logits ``[N, classes]``, or class probabilities shaped like the logits)."""
    indices, probabilities = list(logits.shape[:-1]), list(logits.shape)
    if target.is_floating_point() and list(target.shape) == indices:
        raise ValueError(f"Cross-entropy got {_dtype(target)} labels of shape {indices}: class "
                         "indices must be integers (labels.long()), or pass float class "
                         f"probabilities of shape {probabilities}.")
    wanted = probabilities if target.is_floating_point() else indices
    if list(target.shape) != wanted:
        raise ValueError(f"The model's logits have shape {_shapes(logits)} but the labels "
                         f"{_shapes(target)}; cross-entropy needs integer class indices of "
                         f"shape {indices} or float class probabilities of shape "
                         f"{probabilities}.")
    return F.cross_entropy(logits, target)


def looks_like_class_labels(prediction: Tensor, target: Tensor) -> bool:
    """Floating targets with one value per example against several outputs per example."""
    return (target.is_floating_point() and prediction.dim() >= 1 and prediction.shape[-1] > 1
            and target.shape == prediction.shape[:-1])


def auto(prediction: Tensor, target: Tensor) -> Tensor:
    """The loss a left-out ``loss_fn`` means: cross-entropy for integer targets (class labels),
    mean squared error for floating ones."""
    if looks_like_class_labels(prediction, target):
        raise ValueError(f"The {_dtype(target)} targets of shape {_shapes(target)} against "
                         f"predictions {_shapes(prediction)} look like class labels: pass them as "
                         "integers (labels.long()) for cross-entropy, or name loss_fn.")
    if target.is_floating_point():
        return mse(prediction, target)
    return cross_entropy(prediction, target)


def accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """Fraction of correct argmax predictions."""
    return (logits.argmax(dim=-1) == target).to(logits.dtype).mean()


LOSSES: dict[str, LossFn] = {"mse": mse, "cross_entropy": cross_entropy, "auto": auto}
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


__all__ = ["LossFn", "accuracy", "auto", "cross_entropy", "mse", "resolve_loss",
           "resolve_metric"]
