"""Task stacking: the inner step of many tasks in one call, for models run with stacked parameters.

A task-stacked forward (``models/stacking.py`` derives one for any model of standard layers; a
model that declares ``supports_task_stacking = True`` is one itself, called through
``functional_call``) takes parameters that carry a leading task dimension ``T`` and an input
``[T, N, ...]`` and returns ``[T, N, ...]``: every task computed with its own parameters, tasks
never mixed. Then the gradient of the sum of the per-task losses with respect to the stacked
parameters is every task's own inner gradient, and plain ``torch.autograd.grad``
(``create_graph`` for second order) gives all of them at once. No ``vmap``: the forward picks
kernels that are fast for stacked weights (grouped channels-last convolutions) and exact at
second order (fused batch norm, whose second-order gradients under ``vmap`` are wrong in torch
2.13).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import Params, StepSize, is_zero, sgd_update

# Tasks per model call; peak memory grows with it (meta-losses free each chunk's graph once
# back-propagated). Measurements and when to lower it: docs/speed-and-scale.md.
DEFAULT_CHUNK = 4

# losses(params, data) -> [T]: every task's loss from stacked parameters and stacked data
StackedLoss = Callable[[Mapping[str, Tensor], Any], Tensor]


def supports_task_stacking(model: nn.Module) -> bool:
    """True for models that stack tasks themselves (see the module docstring)."""
    return bool(getattr(model, "supports_task_stacking", False))


def stack_params(params: Mapping[str, Tensor], tasks: int) -> Params:
    """Every parameter repeated over a new leading task dimension (a view, no copy)."""
    return {n: p.unsqueeze(0).expand(tasks, *p.shape) for n, p in params.items()}


def _differentiable(t: Tensor, outer_grad: bool) -> Tensor:
    """``t`` itself if the outer loop differentiates through it, else a fresh leaf for the inner
    gradient (frozen parameters; under ``no_grad``, where even views of parameters claim
    ``requires_grad`` but lead nowhere)."""
    return t if outer_grad and t.requires_grad else t.detach().requires_grad_()


def stacked_inner_step(losses: StackedLoss, params: Mapping[str, Tensor], support: Any,
                       lr: StepSize, first_order: bool = False,
                       adapt_names: Sequence[str] | None = None) -> Params:
    """One SGD step of every task on its support data; ``params`` are stacked ``[T, ...]``."""
    params = dict(params)
    if is_zero(lr):
        return params
    names = list(params) if adapt_names is None else list(adapt_names)
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        current = {n: _differentiable(params[n], outer_grad) for n in names}
        loss = losses({**params, **current}, support).sum()
        grads = torch.autograd.grad(loss, list(current.values()),
                                    create_graph=outer_grad and not first_order)
        return {**params, **sgd_update(current, dict(zip(names, grads, strict=True)), lr)}


__all__ = ["DEFAULT_CHUNK", "stack_params", "stacked_inner_step", "supports_task_stacking"]
