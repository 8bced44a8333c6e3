"""Task losses: the loss of one task as a function of the model, its parameters and the data.

The inner step differentiates a task's loss with respect to the parameters whatever the data
are: ``(x, y)`` pairs for supervised tasks, a batch of episodes for RL tasks. A ``TaskLoss``
is that function; ``SupervisedLoss`` turns a (prediction, target) loss such as MSE into one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit.functional.losses import LossFn, resolve_loss, resolve_metric
from mamlkit.functional.task_batch import supervised_pair

# (model, params stacked [T, ...], buffers, x [T, N, ...]) -> [T, N, ...]: a model run for a
# chunk of tasks at once (``models/stacking.py`` builds one for models of standard layers)
StackedForwardFn = Callable[[nn.Module, Mapping[str, Tensor], Mapping[str, Tensor], Any], Any]


def _accepts(model: nn.Module, *args: Any, **kwargs: Any) -> bool:
    try:
        inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):  # ValueError: no signature to read (a builtin)
        return False
    return True


def model_arguments(model: nn.Module, x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments that input ``x`` stands for.

    A tuple ``(x, aux)`` is several positional inputs and a dict ``{"x": .., "aux": ..}``
    keyword inputs, when ``model.forward`` takes them so; otherwise (``forward(self, inputs)``
    that unpacks its input itself, as before) ``x`` is the one input.
    """
    if isinstance(x, tuple) and _accepts(model, *x):
        return x, {}
    if isinstance(x, dict) and all(isinstance(k, str) for k in x) and _accepts(model, **x):
        return (), x
    return (x,), {}


def forward(model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
            x: Any) -> Any:
    """``model(x)`` with the given parameters and buffers instead of the module's own
    (``model_arguments``: a tuple or dict ``x`` may hold several inputs)."""
    if isinstance(x, Tensor):  # the common case, without reading the signature
        return functional_call(model, (dict(params), dict(buffers)), (x,))
    args, kwargs = model_arguments(model, x)
    return functional_call(model, (dict(params), dict(buffers)), args, kwargs)


class TaskLoss:
    """``loss(model, params, buffers, data)``: one task's scalar loss (no task dimension).

    Subclasses may define ``stacked(model, params, buffers, data) -> [tasks]`` for models that
    run many tasks in one call with stacked parameters (the ``stacked`` batching strategy).
    """

    stacked = None

    def __call__(self, model: nn.Module, params: Mapping[str, Tensor],
                 buffers: Mapping[str, Tensor], data: Any) -> Tensor:
        raise NotImplementedError


class SupervisedLoss(TaskLoss):
    """``fn(model(x), y)`` on ``(x, y)`` data: the loss of H = 1 tasks (MSE, cross-entropy)."""

    def __init__(self, fn: LossFn) -> None:
        self.fn = fn

    def __call__(self, model: nn.Module, params: Mapping[str, Tensor],
                 buffers: Mapping[str, Tensor], data: Any) -> Tensor:
        x, y = supervised_pair(data)
        return self.fn(forward(model, params, buffers, x), y)

    def stacked(self, model: nn.Module, params: Mapping[str, Tensor],  # type: ignore[override]
                buffers: Mapping[str, Tensor], data: Any,
                stacked_forward: StackedForwardFn | None = None) -> Tensor:
        """Each task's loss ``[T]`` from one call of a task-stacking model, or of
        ``stacked_forward`` for models that do not stack tasks themselves."""
        x, y = supervised_pair(data)
        out = (stacked_forward or forward)(model, params, buffers, x)
        return torch.stack([self.fn(out[t], y[t]) for t in range(out.shape[0])])

    def __repr__(self) -> str:
        return f"SupervisedLoss({getattr(self.fn, '__name__', self.fn)!r})"


def as_task_loss(loss: str | LossFn | TaskLoss) -> TaskLoss:
    """A ``TaskLoss`` from a task loss, a loss name (``"mse"``) or a (prediction, target) fn."""
    if isinstance(loss, TaskLoss):
        return loss
    return SupervisedLoss(resolve_loss(loss))


def as_task_metric(metric: str | LossFn | TaskLoss) -> TaskLoss:
    """Like ``as_task_loss`` for evaluation metrics (``"accuracy"`` included)."""
    if isinstance(metric, TaskLoss):
        return metric
    return SupervisedLoss(resolve_metric(metric))


__all__ = ["StackedForwardFn", "SupervisedLoss", "TaskLoss", "as_task_loss", "as_task_metric",
           "forward", "model_arguments"]
