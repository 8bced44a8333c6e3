"""The training loop's meta-step at scale: compiled when asked, split over processes.

``meta_loss_fn`` gives the function that turns a meta-batch into the meta-loss: the learner's own
(eager) or a ``torch.compile``d one that falls back to eager with a warning where compilation
does not work. ``meta_step_backward`` runs this rank's slice of the meta-batch and leaves the
one-process mean meta-gradient in the ``.grad`` of every optimised parameter.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from mamlkit.functional.task_batch import TaskBatch
from mamlkit.run import distributed
from mamlkit.run.learner import Learner

MetaLossFn = Callable[[TaskBatch], Tensor]


def compile_blocker(learner: Learner) -> str | None:
    """Why the meta-step of ``learner`` is not worth compiling, or None if it can be tried.

    The checkpointed inner loop calls ``autograd.grad`` inside a custom ``autograd.Function``,
    which ``torch.compile`` cannot trace; the stacked path at second order differentiates a
    compiled backward (its inner ``autograd.grad(create_graph=True)``), which aot_autograd does
    not support: it fails, after a minute or more of compiling. Anything else is tried (second
    order under ``vmap`` compiles and runs 3x faster for the sinusoid MLP); failures fall back to
    eager.
    """
    second_order = (not getattr(learner, "first_order", True)
                    and getattr(learner, "inner_steps", 0) > 0)
    if getattr(learner, "checkpoint_inner", False) and second_order:
        return "the checkpointed inner loop has a custom backward that torch.compile cannot trace"
    if getattr(getattr(learner, "batching", None), "kind", None) == "stacked" and second_order:
        return ("the stacked second-order step needs a double backward, which torch.compile's "
                "aot_autograd does not support")
    return None


class CompiledMetaLoss:
    """``torch.compile`` of ``learner.meta_loss``; the first failure warns and turns it eager."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.failed: str | None = None

        def loss_of(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
            return learner.meta_loss(TaskBatch((sx, sy), (qx, qy)))

        # static shapes: dynamic ones failed in inductor for the stacked conv4 path (torch 2.13)
        self.compiled = torch.compile(loss_of, dynamic=False)

    def fail(self, error: BaseException) -> None:
        """Give up compiling for the rest of the run, with one warning that says why."""
        self.failed = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
        warnings.warn(f"torch.compile of the meta-step failed ({self.failed}); running eagerly.",
                      stacklevel=3)

    def __call__(self, batch: TaskBatch) -> Tensor:
        if self.failed is None:
            try:
                return self.compiled(*batch.support, *batch.query)
            except Exception as error:  # compilers fail in many ways; eager is always right
                self.fail(error)
        return self.learner.meta_loss(batch)


def meta_loss_fn(learner: Learner, compile: bool = False,
                 checkpoint_inner: bool = False) -> MetaLossFn:
    """The meta-loss of a meta-batch: eager, or compiled with a clean fallback to eager.

    ``checkpoint_inner`` switches the learner to recomputing inner steps in the backward pass;
    learners with their own meta-loss (MAML++, Reptile, iMAML) do not offer it.
    """
    if checkpoint_inner:
        from mamlkit.algorithms.maml import MAML
        from mamlkit.run.config import ConfigError

        if type(learner).meta_loss is not MAML.meta_loss:
            raise ConfigError(f"checkpoint_inner works for maml, anil and metasgd, not for "
                              f"{type(learner).__name__}; drop checkpoint_inner=true.")
        learner.checkpoint_inner = True
    if not compile:
        return learner.meta_loss
    blocker = compile_blocker(learner)
    if blocker is not None:
        warnings.warn(f"compile=true: {blocker}; running eagerly.", stacklevel=2)
        return learner.meta_loss
    return CompiledMetaLoss(learner)


def meta_step_backward(meta_loss: MetaLossFn, batch: TaskBatch, params: Iterable[Tensor],
                       context: distributed.Context | None = None) -> float:
    """Back-propagate this rank's share of ``batch``; returns the meta-loss of the whole batch.

    In one process this is ``meta_loss(batch).backward()``. With several, every rank holds the
    same ``batch``, takes its ``shard``, and the gradients are averaged with one all-reduce,
    weighted by slice size, so ``params``' ``.grad`` is the one-process mean on every rank.
    The caller zeroes the gradients before and steps the optimizer after.
    """
    context = context or distributed.current()
    params = list(params)
    if not context.distributed:
        return _loss_backward(meta_loss, batch, params)
    part = batch[distributed.shard(batch.num_tasks, context)]
    value = _loss_backward(meta_loss, part, params) if part.num_tasks else 0.0
    return distributed.average_gradients(params, value, part.num_tasks, batch.num_tasks)


def _loss_backward(meta_loss: MetaLossFn, batch: TaskBatch, params: list[Tensor]) -> float:
    """``meta_loss(batch).backward()``; a compiled step failing in its backward reruns eagerly."""
    try:
        loss = meta_loss(batch)
        value = loss.item()
        loss.backward()
        return value
    except Exception as error:
        if not isinstance(meta_loss, CompiledMetaLoss) or meta_loss.failed is not None:
            raise
        meta_loss.fail(error)
        for p in params:
            p.grad = None
        return _loss_backward(meta_loss, batch, params)


__all__ = ["CompiledMetaLoss", "compile_blocker", "meta_loss_fn", "meta_step_backward"]
