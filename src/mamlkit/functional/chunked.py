"""The meta-loss chunk by chunk, each chunk's graph freed before the next: memory of one chunk.

The ordinary meta-loss keeps the graph of every task (every inner step and the query pass) until
``.backward()``, so memory grows with the meta-batch, while a plain loop that calls
``backward`` after each task holds one task's. Here each chunk of tasks adapts, takes its query
losses and at once back-propagates their sum to theta, then frees its graph; the gradients of
the chunks add up to the meta-gradient, kept until ``backward``, which only scales it by the
incoming gradient (the result is one number, the mean query loss, so that is exact for any use
of it). Peak memory is one chunk's graph and one gradient; the work is the same, done earlier.

Used by the learner for meta-losses on the stacked path, first or second order (a first-order
chunk's graph still holds its query pass), when nothing but theta needs a gradient (step sizes
and per-step parameters are not learned); once differentiable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mamlkit.functional.adapt import Params
from mamlkit.functional.batching import Batching
from mamlkit.functional.meta import task_losses
from mamlkit.functional.task_batch import TaskBatch

# (theta, the tasks of one chunk) -> their query losses [tasks], with a graph to theta
ChunkLosses = Callable[[Params, TaskBatch], Tensor]


class _ChunkedMean(torch.autograd.Function):
    """theta -> the mean query loss; keeps the meta-gradient, not the graphs."""

    @staticmethod
    def forward(ctx: Any, losses_of: ChunkLosses, parts: Sequence[slice], batch: TaskBatch,
                names: list[str], *theta: Tensor) -> Tensor:
        wanted = ctx.needs_input_grad[4:]
        grads: list[Tensor | None] = [None] * len(names)
        values = []
        with torch.enable_grad():
            leaves = {n: t.detach().requires_grad_(w)
                      for n, t, w in zip(names, theta, wanted, strict=True)}
            inputs = [i for i, w in enumerate(wanted) if w]
            for part in parts:
                losses = losses_of(leaves, batch[part])
                values.append(losses.detach())
                if not inputs or not losses.requires_grad:
                    continue
                chunk = torch.autograd.grad(losses.sum(), [leaves[names[i]] for i in inputs],
                                            allow_unused=True)
                for i, g in zip(inputs, chunk, strict=True):
                    before = grads[i]
                    if g is not None:
                        grads[i] = g if before is None else before + g
                del losses, chunk  # this chunk's graph goes before the next is built
        tasks = batch.num_tasks
        ctx.grads = [None if g is None else g / tasks for g in grads]
        return torch.cat(values).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_mean: Tensor) -> tuple[Tensor | None, ...]:
        grads = [None if g is None else g * grad_mean for g in ctx.grads]
        ctx.grads = None
        return (None, None, None, None, *grads)


def chunked_meta_loss(model: nn.Module, params: Mapping[str, Tensor],
                      buffers: Mapping[str, Tensor], batch: TaskBatch, *,
                      batching: Batching, **kwargs: Any) -> Tensor:
    """``meta_loss`` (the mean query loss after adaptation, ``kwargs`` as for it), with each
    chunk of ``batching`` back-propagated at once and its graph freed (see the module doc).

    Gradients reach the tensors of ``params`` only: step sizes or per-step parameters in
    ``kwargs`` that need gradients must go through ``meta_loss``."""
    def losses_of(theta: Params, chunk: TaskBatch) -> Tensor:
        return task_losses(model, theta, buffers, chunk, batching=batching, **kwargs)

    names = list(params)
    # autograd.Function.apply is unannotated in torch
    mean: Tensor = _ChunkedMean.apply(  # type: ignore[no-untyped-call]
        losses_of, batching.slices(batch.num_tasks), batch, names, *(params[n] for n in names))
    return mean


__all__ = ["chunked_meta_loss"]
