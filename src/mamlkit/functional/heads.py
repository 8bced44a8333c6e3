"""Heads on frozen features: multinomial logistic regression and nearest class mean.

The pretrained baseline of few-shot classification (Chen et al. 2019, "A Closer Look at
Few-shot Classification"; Tian et al. 2020) keeps a network's features fixed and classifies a
task's query examples from its support examples alone. Everything here acts on features stacked
over tasks, ``[T, n, D]`` with labels ``[T, n]`` in ``0 .. ways-1``, each task on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def normalise(features: Tensor) -> Tensor:
    """Each feature vector scaled to unit length (the zero vector stays zero)."""
    return F.normalize(features, dim=-1)


def class_means(features: Tensor, labels: Tensor, ways: int) -> Tensor:
    """``[T, ways, D]``: the mean feature of each class in each task (zero for a class with
    no example)."""
    one_hot = F.one_hot(labels, ways).to(features.dtype)  # [T, n, ways]
    sums = one_hot.transpose(1, 2) @ features
    return sums / one_hot.sum(dim=1).clamp_min(1).unsqueeze(-1)


def nearest_mean_logits(support: Tensor, labels: Tensor, query: Tensor, ways: int) -> Tensor:
    """``[T, q, ways]`` cosine similarities of each query feature to each class mean of the
    L2-normalised support features; the argmax is the nearest class mean."""
    means = class_means(normalise(support), labels, ways)
    return normalise(query) @ normalise(means).transpose(1, 2)


def head_logits(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``[T, n, ways]`` logits of a linear head ``weight [T, ways, D]``, ``bias [T, ways]``."""
    return features @ weight.transpose(1, 2) + bias.unsqueeze(1)


def logistic_objective(weight: Tensor, bias: Tensor, features: Tensor, labels: Tensor,
                       weight_decay: float) -> Tensor:
    """``[T]``: each task's mean cross-entropy plus ``weight_decay / 2 * |weight|^2`` (the
    bias is not decayed). Strictly convex in the weight for ``weight_decay > 0``."""
    logits = head_logits(features, weight, bias)
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    penalty = 0.5 * weight_decay * weight.pow(2).sum(dim=(1, 2))
    return losses.view(labels.shape).mean(dim=1) + penalty


def fit_logistic_head(features: Tensor, labels: Tensor, ways: int, weight_decay: float = 1e-3,
                      steps: int = 100) -> tuple[Tensor, Tensor]:
    """A new linear head for every task: ``logistic_objective`` minimised from zero by
    full-batch L-BFGS (strong Wolfe line search) for at most ``steps`` iterations.

    Deterministic (no sampling); computed in float64 and returned in the features' dtype. The
    tasks' objectives are summed, so each task's gradient is its own; the iterations stop early
    once every entry of the gradient is below 1e-9.
    """
    x = features.detach().double()
    tasks, _, dim = x.shape
    weight = x.new_zeros(tasks, ways, dim, requires_grad=True)
    bias = x.new_zeros(tasks, ways, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=steps, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = logistic_objective(weight, bias, x, labels, weight_decay).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().to(features.dtype), bias.detach().to(features.dtype)


def predicted_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """``[T]``: the fraction of each task's examples whose argmax is their label."""
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean(dim=-1)


__all__ = ["class_means", "fit_logistic_head", "head_logits", "logistic_objective",
           "nearest_mean_logits", "normalise", "predicted_accuracy"]
