"""The inner loop: gradient steps on one task's support data, as pure functions.

A task's loss is a function ``loss(params, support)`` of the parameters and the task's support
data, whatever those are: an ``(x, y)`` pair or a batch of episodes. Everything here works on
a single task (no task dimension) so that ``torch.func.vmap`` can lift it over a stack of tasks.
Gradients come from ``torch.func.grad``, which composes with ``vmap`` and with ordinary
autograd: the adapted parameters stay differentiable with respect to the initial ones
(second-order MAML) unless ``first_order`` detaches the inner gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mamlkit.functional.task_batch import support_at

Params = dict[str, Tensor]
# A step size: one number for all parameters, or one tensor per parameter name (Meta-SGD, LSLR).
StepSize = float | Tensor | Mapping[str, float | Tensor]
# Per-step step sizes: one StepSize for every step, or a sequence with one entry per step.
InnerLR = StepSize | Sequence[StepSize]
# loss(params, data) -> scalar: one task's loss as a function of the parameters.
BoundLoss = Callable[[Mapping[str, Tensor], Any], Tensor]


def step_size(inner_lr: InnerLR, step: int) -> StepSize:
    """The step size of inner step ``step`` (0-based) from a scalar or per-step schedule."""
    if isinstance(inner_lr, Sequence) and not isinstance(inner_lr, str | Tensor):
        if step >= len(inner_lr):
            raise ValueError(
                f"Inner step {step + 1} has no learning rate: {len(inner_lr)} per-step rates given."
            )
        return inner_lr[step]
    return inner_lr


def is_zero(lr: StepSize) -> bool:
    """True for a plain zero step size (alpha = 0 skips the inner gradient entirely)."""
    return isinstance(lr, int | float) and lr == 0


def sgd_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: StepSize) -> Params:
    """theta' = theta - lr * g, with a scalar or per-parameter step size."""
    if isinstance(lr, Mapping):
        return {n: p - lr[n] * grads[n] if n in lr else p for n, p in params.items()}
    return {n: p - lr * grads[n] for n, p in params.items()}


def inner_step(loss: BoundLoss, params: Mapping[str, Tensor], support: Any, lr: StepSize,
               first_order: bool = False, adapt_names: Sequence[str] | None = None) -> Params:
    """One SGD step on one task's ``support`` data: ``theta - lr * grad loss(theta, support)``.

    ``adapt_names`` restricts the step to some parameters (the rest stay as they are, still
    differentiable for the outer loop). ``first_order`` treats the inner gradient as a constant.
    """
    params = dict(params)
    if is_zero(lr):
        return params
    names = list(params) if adapt_names is None else list(adapt_names)
    fixed = {n: p for n, p in params.items() if n not in set(names)}

    def loss_of(adapted: Params) -> Tensor:
        return loss({**fixed, **adapted}, support)

    grads = torch.func.grad(loss_of)({n: params[n] for n in names})
    if first_order:
        grads = {n: g.detach() for n, g in grads.items()}
    return {**params, **sgd_update({n: params[n] for n in names}, grads, lr)}


StepFn = Callable[[BoundLoss, Mapping[str, Tensor], Any, StepSize, bool, Sequence[str] | None],
                  Params]


def adapt(loss: BoundLoss, params: Mapping[str, Tensor], support: Any, inner_lr: InnerLR,
          steps: int, first_order: bool = False, adapt_names: Sequence[str] | None = None,
          step_fn: StepFn = inner_step) -> Params:
    """``steps`` inner steps from ``params``; returns the adapted parameters of one task.

    ``support`` is the task's support data for every step, or ``StepData`` with one entry per
    step (RL tasks sample fresh trajectories after each step).
    """
    adapted = dict(params)
    for step in range(steps):
        adapted = step_fn(loss, adapted, support_at(support, step), step_size(inner_lr, step),
                          first_order, adapt_names)
    return adapted


__all__ = ["BoundLoss", "InnerLR", "Params", "StepSize", "adapt", "inner_step", "is_zero",
           "sgd_update", "step_size"]
