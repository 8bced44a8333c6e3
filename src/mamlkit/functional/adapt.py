"""The inner loop: gradient steps on one task's support set, as pure functions of parameter dicts.

Everything here works on a single task (no task dimension) so that ``torch.func.vmap`` can lift
it over a stack of tasks. Gradients come from ``torch.func.grad``, which composes with ``vmap``
and with ordinary autograd: the adapted parameters stay differentiable with respect to the
initial ones (second-order MAML) unless ``first_order`` detaches the inner gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit.functional.losses import LossFn

Params = dict[str, Tensor]
# A step size: one number for all parameters, or one tensor per parameter name (Meta-SGD, LSLR).
StepSize = float | Tensor | Mapping[str, float | Tensor]
# Per-step step sizes: one StepSize for every step, or a sequence with one entry per step.
InnerLR = StepSize | Sequence[StepSize]


def forward(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
            x: Tensor) -> Tensor:
    """``model(x)`` with the given parameters and buffers instead of the module's own."""
    return functional_call(model, (dict(params), dict(buffers)), (x,))


def task_loss(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
              x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """The loss of ``model`` with ``params`` on one task's data."""
    return loss_fn(forward(model, params, buffers, x), y)


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


def inner_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    lr: StepSize,
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
) -> Params:
    """One SGD step on the support set ``(x, y)`` of one task.

    ``adapt_names`` restricts the step to some parameters (the rest stay as they are, still
    differentiable for the outer loop). ``first_order`` treats the inner gradient as a constant.
    """
    params = dict(params)
    if is_zero(lr):
        return params
    names = list(params) if adapt_names is None else list(adapt_names)
    fixed = {n: p for n, p in params.items() if n not in set(names)}

    def loss_of(adapted: Params) -> Tensor:
        return task_loss(model, {**fixed, **adapted}, buffers, x, y, loss_fn)

    grads = torch.func.grad(loss_of)({n: params[n] for n in names})
    if first_order:
        grads = {n: g.detach() for n, g in grads.items()}
    return {**params, **sgd_update({n: params[n] for n in names}, grads, lr)}


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    inner_lr: InnerLR,
    steps: int,
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    step_fn: Callable[..., Params] | None = None,
) -> Params:
    """``steps`` inner steps from ``params``; returns the adapted parameters of one task."""
    step_fn = step_fn or inner_step
    adapted = dict(params)
    for step in range(steps):
        adapted = step_fn(model, adapted, buffers, x, y, loss_fn, step_size(inner_lr, step),
                          first_order, adapt_names)
    return adapted
