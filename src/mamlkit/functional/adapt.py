"""The inner loop: gradient steps on one task's support data, as pure functions.

A task's loss is a function ``loss(params, support)`` of the parameters and the task's support
data, whatever those are: an ``(x, y)`` pair or a batch of episodes. ``inner_step`` works on a
single task (no task dimension) so that ``torch.func.vmap`` can lift it over a stack of tasks.
Gradients come from ``torch.func.grad``, which composes with ``vmap`` and with ordinary
autograd: the adapted parameters stay differentiable with respect to the initial ones
(second-order MAML) unless ``first_order`` detaches the inner gradient.

``trajectory`` is the one k-step loop of the library: every learner, meta-loss, multi-step loss
and evaluation curve walks it, with an ``InnerLoop`` saying how many steps of which size and an
``InnerStep`` saying how one step is taken (``gradient_step`` unless a learner brings its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

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
# Parameters that replace entries before each inner step (MAML++'s per-step batch-norm
# weights); steps past the given ones reuse the last set.
PerStep = Sequence[Mapping[str, Tensor]] | None


def step_size(inner_lr: InnerLR, step: int) -> StepSize:
    """The step size of inner step ``step`` (0-based) from a scalar or per-step schedule."""
    if isinstance(inner_lr, Sequence) and not isinstance(inner_lr, str | Tensor):
        if step >= len(inner_lr):
            raise ValueError(
                f"Inner step {step + 1} has no learning rate: {len(inner_lr)} per-step rates given."
            )
        return inner_lr[step]
    return inner_lr


def at_step(per_step: PerStep, step: int) -> Mapping[str, Tensor]:
    """The per-step parameters in force after ``step`` steps (none: an empty dict)."""
    if not per_step:
        return {}
    return per_step[min(step, len(per_step) - 1)]


@dataclass(frozen=True)
class InnerLoop:
    """Every task's inner loop: ``steps`` steps of ``inner_lr`` (one number, one per parameter
    name, or a list with one per step); ``first_order`` treats the inner gradients as constants;
    ``adapt_names`` limits the steps to those parameters (the rest stay theta, still
    differentiable); ``per_step`` parameters replace entries before each step (MAML++)."""

    inner_lr: InnerLR
    steps: int
    first_order: bool = False
    adapt_names: Sequence[str] | None = None
    per_step: PerStep = None

    def lr(self, step: int) -> StepSize:
        """The step size of step ``step`` (0-based)."""
        return step_size(self.inner_lr, step)

    def but(self, **changes: Any) -> InnerLoop:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return replace(self, **changes)


def scalar_step_size(inner_lr: InnerLR, step: int, user: str) -> float | Tensor:
    """``step_size`` where ``user`` (named in the error) takes one number for every parameter."""
    rate = step_size(inner_lr, step)
    if isinstance(rate, Mapping):
        raise TypeError(f"{user} takes one step size per step, not one per parameter.")
    return rate


def is_zero(lr: InnerLR) -> bool:
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


class Steps(Protocol):
    """What the loop needs of a task (``batching.TaskOps``, or a chunk of stacked tasks)."""

    def step(self, params: Mapping[str, Tensor], data: Any, lr: StepSize,
             first_order: bool = False, adapt_names: Sequence[str] | None = None) -> Params:
        """One gradient step on ``data``: ``inner_step`` for one task."""
        ...

    def shared(self, params: Mapping[str, Tensor]) -> Params:
        """Parameters shared by every task, in the form ``step`` expects."""
        ...


@dataclass(frozen=True)
class LossSteps:
    """``Steps`` of one task given by its bound loss."""

    loss: BoundLoss

    def step(self, params: Mapping[str, Tensor], data: Any, lr: StepSize,
             first_order: bool = False, adapt_names: Sequence[str] | None = None) -> Params:
        return inner_step(self.loss, params, data, lr, first_order, adapt_names)

    def shared(self, params: Mapping[str, Tensor]) -> Params:
        return dict(params)


# (ops, params before, this step's support data, step index, the loop) -> params after the step
InnerStep = Callable[[Steps, Params, Any, int, InnerLoop], Params]


def gradient_step(ops: Steps, params: Params, support: Any, step: int,
                  inner: InnerLoop) -> Params:
    """The plain inner step: ``inner.lr(step)``, first or second order as ``inner`` says."""
    return ops.step(params, support, inner.lr(step), inner.first_order, inner.adapt_names)


def trajectory(ops: Steps, params: Mapping[str, Tensor], support: Any, inner: InnerLoop,
               step: InnerStep = gradient_step) -> Iterator[Params]:
    """The parameters after 0, 1, ..., ``inner.steps`` steps, each computed when asked for.

    ``support`` is the task's support data for every step, or ``StepData`` with one entry per
    step (RL tasks sample fresh trajectories after each step).
    """
    current = {**params, **ops.shared(at_step(inner.per_step, 0))}
    yield current
    for k in range(inner.steps):
        current = step(ops, current, support_at(support, k), k, inner)
        current = {**current, **ops.shared(at_step(inner.per_step, k + 1))}
        yield current


def adapt(loss: BoundLoss | Steps, params: Mapping[str, Tensor], support: Any,
          inner: InnerLoop, step: InnerStep = gradient_step) -> Params:
    """One task's parameters after ``inner.steps`` steps from ``params`` on ``support``.

    ``loss(params, support)`` is the task's loss (or ``Steps`` that take the step, as the
    batching's ops do for a chunk of stacked tasks).
    """
    # the batching's ops have ``shared``; a bound loss does not (hasattr does not narrow types)
    ops = cast(Steps, loss) if hasattr(loss, "shared") else LossSteps(loss)
    *_, adapted = trajectory(ops, params, support, inner, step)
    return adapted


def detached(step: InnerStep) -> InnerStep:
    """``step`` with its result cut from the graph (evaluation: no meta-gradient, no memory)."""
    def run(ops: Steps, params: Params, support: Any, k: int, inner: InnerLoop) -> Params:
        return {n: t.detach() for n, t in step(ops, params, support, k, inner).items()}

    return run


__all__ = ["BoundLoss", "InnerLR", "InnerLoop", "InnerStep", "LossSteps", "Params", "PerStep",
           "StepSize", "Steps", "adapt", "at_step", "detached", "gradient_step", "inner_step",
           "is_zero", "scalar_step_size", "sgd_update", "step_size", "trajectory"]
