"""The one batching strategy: how a per-task function runs over a stack of tasks.

Every path of the library (meta-loss, multi-step loss, checkpointed and implicit gradients,
Reptile, evaluation curves, RL adaptation) is written once as ``fn(ops, params, data)`` for
one task, where ``ops`` offers the task's loss, an inner step and the model's forward pass.
``Batching.map`` runs it for every task:

- ``vmap``: ``torch.func.vmap`` over tasks (``chunk_size`` tasks per call), with per-task ops;
- ``loop``: a Python loop over tasks with the same per-task ops, exact for any module;
- ``stacked``: chunks of tasks (``chunk_size``, default ``DEFAULT_CHUNK``) with *stacked* ops,
  which run the model once for the whole chunk through the batching's ``stacked_forward``
  (``models/stacking.py`` derives one for any model of standard layers; a model that declares
  ``supports_task_stacking`` stacks tasks itself); ``fn`` then sees parameters and data with a
  leading task dimension and gets ``[T]``-shaped values.

``resolve_batching`` is the one place a model gets its batching: ``choose_batching`` picks the
strategy measured fastest and exact for it; where that is ``vmap`` for ``auto``,
``LoopFallback`` remembers an operation that ``vmap`` cannot batch (an LSTM's) once the first
call meets it, and the loop runs from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from mamlkit.functional.adapt import Params, StepSize, inner_step
from mamlkit.functional.stacked import (
    DEFAULT_CHUNK,
    stack_params,
    stacked_inner_step,
    supports_task_stacking,
)
from mamlkit.functional.task_batch import leaves, take
from mamlkit.functional.task_loss import StackedForwardFn, TaskLoss, forward

Out = TypeVar("Out")  # what a per-task function returns; stacked over tasks, the same form

BATCHINGS: tuple[str, ...] = ("vmap", "loop", "stacked")

log = logging.getLogger("mamlkit")


@dataclass(frozen=True)
class TaskOps:
    """What a per-task function may do with one task (no task dimension)."""

    model: nn.Module
    buffers: Mapping[str, Tensor]
    loss: TaskLoss
    tasks: int | None = None  # None: one task; an int: a stacked chunk of that many tasks

    def forward(self, params: Mapping[str, Tensor], x: Any) -> Any:
        return forward(self.model, params, self.buffers, x)

    def value(self, params: Mapping[str, Tensor], data: Any,
              loss: TaskLoss | None = None) -> Tensor:
        """The task's loss (or ``loss``, a metric) at ``params``."""
        return (loss or self.loss)(self.model, params, self.buffers, data)

    def bound(self, loss: TaskLoss | None = None) -> Callable[[Mapping[str, Tensor], Any], Tensor]:
        """``loss(params, data)`` with the model and buffers filled in."""
        return lambda params, data: self.value(params, data, loss)

    def step(self, params: Mapping[str, Tensor], data: Any, lr: StepSize,
             first_order: bool = False, adapt_names: Sequence[str] | None = None) -> Params:
        return inner_step(self.bound(), params, data, lr, first_order, adapt_names)

    def shared(self, params: Mapping[str, Tensor]) -> Params:
        """Parameters shared by all tasks, in the form the ops expect."""
        return dict(params)


@dataclass(frozen=True)
class StackedOps(TaskOps):
    """The same operations on a chunk of ``tasks`` tasks with stacked parameters ``[T, ...]``,
    the model run through ``stacked_forward``."""

    stacked_forward: StackedForwardFn = forward

    def forward(self, params: Mapping[str, Tensor], x: Any) -> Any:
        return self.stacked_forward(self.model, params, self.buffers, x)

    def value(self, params: Mapping[str, Tensor], data: Any,
              loss: TaskLoss | None = None) -> Tensor:
        loss = loss or self.loss
        if loss.stacked is None:
            raise ValueError(f"The task loss {loss!r} has no stacked form; choose "
                             "batching='vmap' or 'loop'.")
        value: Tensor = loss.stacked(self.model, params, self.buffers, data,
                                     stacked_forward=self.stacked_forward)
        return value

    def step(self, params: Mapping[str, Tensor], data: Any, lr: StepSize,
             first_order: bool = False, adapt_names: Sequence[str] | None = None) -> Params:
        return stacked_inner_step(self.bound(), params, data, lr, first_order, adapt_names)

    def shared(self, params: Mapping[str, Tensor]) -> Params:
        assert self.tasks is not None  # a stacked chunk always knows its size
        return stack_params(params, self.tasks)


def _stack(outputs: list[Out], dim_fn: Callable[[list[Tensor]], Tensor]) -> Out:
    flat = [pytree.tree_flatten(o) for o in outputs]
    spec = flat[0][1]
    columns = zip(*(f[0] for f in flat), strict=True)
    stacked: Out = pytree.tree_unflatten([dim_fn(list(c)) for c in columns], spec)
    return stacked


def _unbatchable(error: RuntimeError) -> bool:
    """torch.func's own refusals (an operation without a batching rule, ``.item()``, control
    flow on a tensor, in-place writes into an unbatched tensor): a loop over tasks runs them."""
    message = str(error)
    return "Batching rule not implemented" in message or message.startswith("vmap:")


def _innermost_layer(model: nn.Module, trace: TracebackType | None) -> str:
    """The deepest submodule of ``model`` whose ``forward`` the traceback passes through."""
    names = {id(m): name for name, m in model.named_modules()}
    found = ""
    while trace is not None:
        module = trace.tb_frame.f_locals.get("self")
        if isinstance(module, nn.Module) and id(module) in names and names[id(module)]:
            found = f"layer '{names[id(module)]}' ({type(module).__name__})"
        trace = trace.tb_next
    return found or type(model).__name__


def _operation(error: RuntimeError) -> str:
    """``aten::lstm.input`` from torch.func's message, else its first sentence."""
    words = [w.rstrip(".") for w in str(error).split() if w.startswith("aten::")]
    return words[0] if words else str(error).strip().splitlines()[0].rstrip(".")


@dataclass
class LoopFallback:
    """What ``auto`` learnt on its first vmap call: an operation vmap cannot batch (then every
    later call loops over tasks), or that the calls so far went through."""

    problem: str | None = None

    def note(self, model: nn.Module, error: RuntimeError) -> None:
        self.problem = f"{_innermost_layer(model, error.__traceback__)} calls {_operation(error)}"
        log.warning("mamlkit: %s runs its tasks in a loop (batching='loop'), not in one vmap: "
                    "%s, which torch.func.vmap cannot batch.", type(model).__name__, self.problem)


def _rng_states(devices: set[torch.device]) -> list[tuple[torch.device, Tensor]]:
    """The generators a failed vmap call may have drawn from (dropout before the layer)."""
    states = [(torch.device("cpu"), torch.get_rng_state())]
    return states + [(d, torch.cuda.get_rng_state(d)) for d in devices if d.type == "cuda"]


def _restore(states: list[tuple[torch.device, Tensor]]) -> None:
    for device, state in states:
        if device.type == "cpu":
            torch.set_rng_state(state)
        else:
            torch.cuda.set_rng_state(state, device)


@dataclass(frozen=True)
class Batching:
    """``vmap`` | ``loop`` | ``stacked``, with ``chunk_size`` tasks per call (None: default).

    ``stacked_forward`` (stacked only) runs the model for a chunk of tasks (``resolve_batching``
    fills it in; left out, the model must stack tasks itself); ``fallback`` (vmap only, what
    ``auto`` gives) loops over tasks once an operation without a vmap rule is met, saying so
    once. Both are how, not what, so equality and hashing ignore them.
    """

    kind: str = "vmap"
    chunk_size: int | None = None
    stacked_forward: StackedForwardFn | None = field(default=None, compare=False, hash=False,
                                                   repr=False)
    fallback: LoopFallback | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in BATCHINGS:
            raise ValueError(f"Unknown batching {self.kind!r}; choose auto, "
                             f"{', '.join(BATCHINGS)}.")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive or None, got {self.chunk_size}.")

    def slices(self, num_tasks: int) -> list[slice]:
        """The chunks of tasks that one call holds (stacked: DEFAULT_CHUNK unless set)."""
        default = DEFAULT_CHUNK if self.kind == "stacked" else num_tasks
        size = self.chunk_size or default or 1
        return [slice(i, i + size) for i in range(0, num_tasks, size)]

    def map(self, fn: Callable[[TaskOps, Params, Any], Out], model: nn.Module,
            buffers: Mapping[str, Tensor], loss: TaskLoss, params: Mapping[str, Tensor],
            data: Any, batched_params: bool = False) -> Out:
        """``fn(ops, params, task_data)`` for every task of ``data`` (leading task dim), its
        outputs stacked over tasks. ``params`` are shared unless ``batched_params``."""
        params, buffers = dict(params), dict(buffers)
        if self.kind == "stacked":
            run_stacked = self.stacked_forward or _own_stacking(model)
            outputs = []
            for part in self.slices(leaves(data)[0].shape[0]):
                chunk = take(data, part)
                ops = StackedOps(model, buffers, loss, leaves(chunk)[0].shape[0], run_stacked)
                p = take(params, part) if batched_params else ops.shared(params)
                outputs.append(fn(ops, p, chunk))
            return _stack(outputs, torch.cat)
        task_ops = TaskOps(model, buffers, loss)

        def one(p: Params, d: Any) -> Out:
            return fn(task_ops, p, d)

        if self.kind == "vmap" and (self.fallback is None or self.fallback.problem is None):
            run = torch.func.vmap(one, in_dims=(0 if batched_params else None, 0),
                                  randomness="different", chunk_size=self.chunk_size)
            if self.fallback is None:
                mapped: Out = run(params, data)
                return mapped
            rng = _rng_states({t.device for t in leaves((params, data))})
            try:
                mapped = run(params, data)
                return mapped
            except RuntimeError as error:
                if not _unbatchable(error):
                    raise
                self.fallback.note(model, error)
                _restore(rng)  # the loop draws what a loop from the start would have drawn
        num_tasks = leaves(data)[0].shape[0]
        return _stack([one(take(params, i) if batched_params else params, take(data, i))
                       for i in range(num_tasks)], torch.stack)


def has_torch_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` holds a stock ``nn.BatchNorm1d/2d/3d``."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


# model -> its task-stacked forward, or ValueError naming the layer that has none
# (``models.stacking.stacker`` derives one for models of standard layers)
Stacker = Callable[[nn.Module], StackedForwardFn]


def _own_stacking(model: nn.Module) -> StackedForwardFn:
    """A model that stacks tasks itself runs through ``functional_call`` as it is."""
    if not supports_task_stacking(model):
        raise ValueError(f"{type(model).__name__} does not support batching='stacked'; "
                         "choose auto, vmap or loop.")
    return forward


def stacking_for(model: nn.Module, stacker: Stacker | None) -> StackedForwardFn:
    """The model's task-stacked forward: its own, else ``stacker``'s; or one sentence."""
    if supports_task_stacking(model) or stacker is None:
        return _own_stacking(model)
    try:
        return stacker(model)
    except ValueError as error:
        raise ValueError(f"{type(model).__name__} does not support batching='stacked': "
                         f"{error}; choose auto, vmap or loop.") from None


def _stackable(model: nn.Module, stacker: Stacker | None) -> str | None:
    """None if ``model`` can be stacked, else why not."""
    if supports_task_stacking(model):
        return None
    if stacker is None:
        return "no stacked form given"
    try:
        stacker(model)
    except ValueError as error:
        return str(error)
    return None


def choose_batching(model: nn.Module, stacker: Stacker | None = None) -> str:
    """The batching strategy measured fastest and exact for this kind of model.

    On CPU, conv nets and batch norm run task-stacked where the model stacks itself or
    ``stacker`` derives its stacked form (else in a loop: ``vmap`` makes per-task grouped NCHW
    convolutions, and is inexact at second order with ``nn.BatchNorm``); on a GPU, ``vmap``
    unless the model holds ``nn.BatchNorm``. Everything else runs in one ``vmap``. The
    measurements are in docs/speed-and-scale.md.
    """
    on_gpu = any(p.is_cuda for p in model.parameters())
    batch_norm = has_torch_batch_norm(model)
    if on_gpu:
        return "loop" if batch_norm else "vmap"
    if supports_task_stacking(model) and not batch_norm:
        return "stacked"
    if batch_norm or has_conv(model):
        return "stacked" if _stackable(model, stacker) is None else "loop"
    return "vmap"


def auto_batching(kind: str, chunk_size: int | None = None) -> Batching:
    """``auto``'s choice ``kind``: vmap with a fallback to the loop (``LoopFallback``)."""
    return Batching(kind, chunk_size, fallback=LoopFallback() if kind == "vmap" else None)


STOCK_BATCH_NORM_CHUNK = 2  # keeps a stock-BN conv net within 2x the loop's memory


def _keeps_running_stats(model: nn.Module) -> bool:
    """Batch norm with running statistics: a stock layer, or one that ``MAML`` converted."""
    return any(getattr(m, "track_running_stats", False) for m in model.modules())


def _stacked(model: nn.Module, chunk_size: int | None, stacker: Stacker | None) -> Batching:
    """Task stacking; without a ``chunk_size``, models with stock batch norm (running statistics)
    stack 2 tasks per call (they keep more per task), the rest ``DEFAULT_CHUNK``."""
    if chunk_size is None and _keeps_running_stats(model):
        chunk_size = STOCK_BATCH_NORM_CHUNK
    return Batching("stacked", chunk_size, stacked_forward=stacking_for(model, stacker))


def resolve_batching(batching: str | Batching, model: nn.Module, chunk_size: int | None = None,
                     stacker: Stacker | None = None, announce: bool = False) -> Batching:
    """A ``Batching`` for ``model`` from ``"auto"``, a kind or a ``Batching``.

    ``stacked`` (asked for, or chosen by ``auto``) runs through the model's own stacked forward
    or ``stacker``'s, or stops with one sentence naming the layer. ``announce``: one log line
    when ``auto`` leaves a conv net in a loop because it cannot be stacked.
    """
    if isinstance(batching, Batching):
        if batching.kind == "stacked" and batching.stacked_forward is None:
            return replace(batching, stacked_forward=stacking_for(model, stacker))
        return batching
    if batching == "stacked":
        return _stacked(model, chunk_size, stacker)
    if batching != "auto":
        return Batching(batching, chunk_size)
    kind = choose_batching(model, stacker)
    if kind == "stacked":
        return _stacked(model, chunk_size, stacker)
    on_gpu = any(p.is_cuda for p in model.parameters())
    if kind == "loop" and announce and has_conv(model) and not on_gpu:
        log.warning("mamlkit: %s runs with batching='loop', not task-stacked: %s.",
                    type(model).__name__, _stackable(model, stacker))
    return auto_batching(kind, chunk_size)


__all__ = ["BATCHINGS", "Batching", "LoopFallback", "StackedOps", "Stacker", "TaskOps",
           "auto_batching", "choose_batching", "has_conv", "has_torch_batch_norm",
           "resolve_batching", "stacking_for"]
