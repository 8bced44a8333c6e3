"""Second-order meta-loss with gradient checkpointing across inner steps: memory of one step.

Second-order MAML keeps the graph of every inner step (activations and the graph of each inner
gradient) until the backward pass, so memory grows with ``steps`` and with the tasks of the
meta-batch. Here a custom ``autograd.Function`` per chunk of tasks runs the inner loop without a
graph and keeps only the adapted parameters after each step, plus the query loss's gradient at
the last ones (its graph is freed at once). Its backward walks the steps in reverse: rebuild step
``k``'s graph from the kept parameters, vector-Jacobian product, free it. Peak memory is one
step of one chunk instead of every step of every task; the price is one extra first-order inner
step per step. The result equals the ordinary second-order meta-gradient up to rounding.

``torch.utils.checkpoint`` (non-reentrant) is exact for the stacked path (it supports the inner
``autograd.grad(create_graph=True)``) but ``torch.func.grad`` refuses saved-tensor hooks, so it
cannot serve the ``vmap`` path, and it would keep every chunk's query graph alive; this function
serves every batching strategy. Learned step sizes (tensors in ``inner_lr`` that require grad,
Meta-SGD) get their gradients too. Once differentiable: no third-order gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils import _pytree as pytree

from mamlkit.functional.adapt import InnerLoop, InnerLR, Params, gradient_step
from mamlkit.functional.batching import Batching, Out, TaskOps
from mamlkit.functional.stacked import stack_params
from mamlkit.functional.task_batch import TaskBatch, support_at
from mamlkit.functional.task_loss import TaskLoss, as_task_loss


def _plain(tree: Any) -> Any:
    """``inner_lr`` with Mappings as dicts and Sequences as lists, so pytree finds its tensors."""
    if isinstance(tree, Tensor | int | float):
        return tree
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, Sequence) and not isinstance(tree, str):
        return [_plain(v) for v in tree]
    raise TypeError(f"checkpoint_inner supports inner_lr made of numbers, tensors, dicts and "
                    f"lists; got {type(tree).__name__}.")


@dataclass
class _Plan:
    """One chunk's inner loop and query loss, on parameters stacked over its tasks."""

    model: nn.Module
    buffers: dict[str, Tensor]
    loss: TaskLoss
    support: Any
    query: Any
    inner: InnerLoop  # second order; its inner_lr is rebuilt from lr_spec and the leaves
    batching: Batching
    lr_spec: Any  # pytree spec of inner_lr
    lr_leaves: list[Any]  # its leaves; tensor slots that need grad are filled per call
    lr_slots: list[int]  # indices of leaves that are differentiable tensors
    tasks: int

    def rates(self, tensors: Sequence[Tensor]) -> InnerLR:
        leaves = list(self.lr_leaves)
        for slot, t in zip(self.lr_slots, tensors, strict=True):
            leaves[slot] = t
        rates: InnerLR = pytree.tree_unflatten(leaves, self.lr_spec)
        return rates

    def _map(self, fn: Callable[[TaskOps, Params, Any], Out], params: Params, data: Any) -> Out:
        return self.batching.map(fn, self.model, self.buffers, self.loss, params, data,
                                 batched_params=True)

    def step(self, params: Params, k: int, inner_lr: InnerLR) -> Params:
        """Inner step ``k`` of every task (second order when grad mode is on)."""
        inner = self.inner.but(inner_lr=inner_lr)
        return self._map(lambda ops, p, s: gradient_step(ops, p, s, k, inner), params,
                         support_at(self.support, k))

    def query_losses(self, params: Params) -> Tensor:
        """Every task's query loss ``[tasks]`` with its own (stacked) parameters."""
        return self._map(lambda ops, p, q: ops.value(p, q), params, self.query)


def _leaves(params: Params) -> Params:
    return {n: t.detach().requires_grad_() for n, t in params.items()}


class _CheckpointedQueryLosses(torch.autograd.Function):
    """theta, learned rates -> query losses ``[tasks]``; keeps parameters, not graphs."""

    @staticmethod
    def forward(ctx: Any, plan: _Plan, names: list[str], *inputs: Tensor) -> Tensor:
        theta = dict(zip(names, inputs[:len(names)], strict=True))
        rate_tensors = inputs[len(names):]
        tasks = plan.tasks
        inner_lr = plan.rates([t.detach() for t in rate_tensors])
        states = [stack_params({n: t.detach() for n, t in theta.items()}, tasks)]
        for k in range(plan.inner.steps):  # grad mode is off here: first-order steps, no graph
            states.append({n: t.detach() for n, t in plan.step(states[-1], k, inner_lr).items()})
        with torch.enable_grad():
            last = _leaves(states.pop())
            losses = plan.query_losses(last)
            grads = torch.autograd.grad(losses.sum(), list(last.values()), allow_unused=True)
        ctx.plan, ctx.names, ctx.states = plan, names, states
        ctx.query_grads = {n: torch.zeros_like(last[n]) if g is None else g
                           for n, g in zip(last, grads, strict=True)}
        ctx.save_for_backward(*rate_tensors)
        return losses.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_losses: Tensor) -> tuple[Tensor | None, ...]:
        plan, names = ctx.plan, ctx.names
        rate_tensors = ctx.saved_tensors
        # tasks are independent: d(sum_t w_t L_t)/d theta_K[t] = w_t dL_t/d theta_K[t]
        g = {n: q * grad_losses.reshape(-1, *([1] * (q.dim() - 1)))
             for n, q in ctx.query_grads.items()}
        rate_grads: list[Tensor | None] = [None] * len(rate_tensors)
        with torch.enable_grad():
            rates = [t.detach().requires_grad_() for t in rate_tensors]
            inner_lr = plan.rates(rates)
            for k in reversed(range(plan.inner.steps)):
                before = _leaves(ctx.states[k])
                after = plan.step(before, k, inner_lr)
                outs = [n for n in after if after[n].requires_grad]
                grads = torch.autograd.grad([after[n] for n in outs], [*before.values(), *rates],
                                            [g[n] for n in outs], allow_unused=True)
                g = {n: (torch.zeros_like(before[n]) if d is None else d)
                     + (g[n] if n not in outs else 0)  # an output without graph passes as is
                     for n, d in zip(before, grads[:len(before)], strict=True)}
                for i, d in enumerate(grads[len(before):]):
                    before_grad = rate_grads[i]
                    if d is not None:
                        rate_grads[i] = d if before_grad is None else before_grad + d
                del before, after, grads
        theta_grads = [g[n].sum(0) for n in names]  # the tasks' shares of the shared theta
        ctx.states = ctx.query_grads = None
        return (None, None, *theta_grads, *rate_grads)


def checkpointed_task_losses(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss: str | Callable[..., Any] | TaskLoss,
    inner: InnerLoop,
    batching: Batching | str = "vmap",
) -> Tensor:
    """Query loss after ``inner.steps`` second-order inner steps of every task, ``[tasks]``,
    with checkpointing across inner steps (see the module docstring; no per-step parameters).

    Tasks go in the batching's chunks (stacked: ``DEFAULT_CHUNK``; vmap and loop: all tasks
    unless ``chunk_size`` is set); the backward holds one inner step of one chunk at a time.
    """
    if inner.per_step:
        raise ValueError("Checkpointed inner steps take no per-step parameters; use the "
                         "ordinary meta-loss.")
    batching = batching if isinstance(batching, Batching) else Batching(batching)
    task_loss = as_task_loss(batch.loss or loss)
    names = list(params)
    leaves, spec = pytree.tree_flatten(_plain(inner.inner_lr))
    slots = [i for i, t in enumerate(leaves) if torch.is_tensor(t) and t.requires_grad]
    losses = []
    for part in batching.slices(batch.num_tasks):
        chunk = batch[part]
        plan = _Plan(model, dict(buffers), task_loss, chunk.support, chunk.query,
                     inner.but(first_order=False), batching, spec, leaves, slots,
                     chunk.num_tasks)
        # autograd.Function.apply is unannotated in torch
        losses.append(_CheckpointedQueryLosses.apply(  # type: ignore[no-untyped-call]
            plan, names, *(params[n] for n in names), *(leaves[i] for i in slots)))
    return torch.cat(losses)


__all__ = ["checkpointed_task_losses"]
