"""A gradient step that never raises the task's support loss: for step sizes used beyond what
they were learned for.

Meta-SGD's and MAML++'s step sizes are meta-learned for a fixed number of inner steps; they may
overshoot when reused for more (they only have to land well after the trained steps), and ten
such steps diverged on sinusoid. The safeguarded step keeps the learned step sizes where they
lower the support loss and otherwise halves them until they do (or takes no step): a
backtracking line search along the learned step, with no data-dependent Python branches, so it
runs under ``vmap`` and on task-stacked parameters alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mamlkit.functional.adapt import Params, StepSize
from mamlkit.functional.batching import TaskOps

BACKTRACK = tuple(2.0 ** -k for k in range(8))  # fractions of the step tried, largest first


def _per_task(mask: Tensor, like: Tensor) -> Tensor:
    """``mask`` ([] for one task, [tasks] for stacked parameters) broadcast against ``like``."""
    return mask.reshape(*mask.shape, *[1] * (like.dim() - mask.dim()))


def safeguarded_step(ops: TaskOps, params: Mapping[str, Tensor], support: Any, lr: StepSize,
                     adapt_names: Sequence[str] | None = None) -> Params:
    """One first-order step of ``lr``, or of the largest fraction in ``BACKTRACK`` of it, that
    strictly lowers the support loss; no step where none does (a NaN loss never qualifies)."""
    params = dict(params)
    current = ops.value(params, support)
    full = ops.step(params, support, lr, True, adapt_names)
    best, found = params, torch.zeros_like(current, dtype=torch.bool)
    for fraction in BACKTRACK:
        trial = {n: params[n] + fraction * (full[n] - params[n]) for n in params}
        take = ~found & (ops.value(trial, support) < current)
        best = {n: torch.where(_per_task(take, t), trial[n], best[n]) for n, t in params.items()}
        found = found | take
    return best


__all__ = ["BACKTRACK", "safeguarded_step"]
