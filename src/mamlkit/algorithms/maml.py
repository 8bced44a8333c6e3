"""MAML and first-order MAML as an nn.Module that owns the meta-parameters.

Supervised and RL tasks go through the same learner: a task brings its support and query data
(and, for RL or imitation, its own task loss), the learner adapts on the support data with the
functional core and looks at the query data with the adapted parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from mamlkit import functional as MF
from mamlkit.algorithms.arguments import check_inner_lr, check_step_counts, check_steps
from mamlkit.functional.adapt import InnerLoop, InnerLR, PerStep, is_zero
from mamlkit.functional.batching import (
    Batching,
    TaskOps,
    has_torch_batch_norm,
    resolve_batching,
)
from mamlkit.functional.checkpointed import checkpointed_task_losses
from mamlkit.functional.chunked import chunked_meta_loss
from mamlkit.functional.losses import LossFn
from mamlkit.functional.select import select_names
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.functional.task_loss import TaskLoss, as_task_loss, model_arguments
from mamlkit.models.batch_norm import exact_batch_norm, running_stat_layers, update_running_stats
from mamlkit.models.stacking import stacked_forward, stacker, update_running_stats_stacked
from mamlkit.registry import LearnerArgs, LearnerSpec, register


class MAML(nn.Module):
    """Model-agnostic meta-learning around any ``nn.Module``.

    ``inner_lr`` (alpha) may be one number or one per inner step, each finite and >= 0;
    ``inner_lr=0`` is plain multi-task training (the "pretrained" baseline). ``first_order=True``
    drops the second-order terms. ``batching`` is ``"auto"``, ``"vmap"``, ``"loop"``, ``"stacked"``
    (models with ``supports_task_stacking``, or made of standard layers: ``models/stacking.py``) or
    a ``functional.Batching`` (``functional.resolve_batching``, with the task stacking of
    ``models/stacking.py``); ``chunk_size`` bounds how many tasks one
    call holds in memory. ``checkpoint_inner=True`` recomputes each inner step in the backward pass
    (second order): memory of one step of one chunk, at the cost of one extra first-order step per
    step (``functional/checkpointed.py``). Without it, stacked meta-losses (first or second order)
    back-propagate each chunk as soon as it is computed and free its graph (``frees_chunks``,
    ``functional/chunked.py``): memory of one chunk, no extra work. ``adapt_names`` are glob
    patterns (``["head.*"]``) of the parameters the inner loop adapts (default: all); the others are
    meta-learned in the outer loop only. ``loss_fn`` is a (prediction, target) loss or its name, or
    a ``functional.TaskLoss``; left out, integer targets get cross-entropy and floating ones MSE.
    Tasks that carry their own loss use theirs.

    Stock ``nn.BatchNorm`` layers are replaced in place (one log line says so) by ``TaskBatchNorm``
    layers holding the same Parameter and buffer objects (an optimizer built before wrapping still
    trains them): per-task batch statistics in the inner loop and for the query set, as in the
    paper's network, exact at second order on every batching path. Their running statistics are
    never written inside a gradient transform; ``meta_loss`` refreshes them once per call from theta
    on the support inputs (the batches the inner loop normalises at theta; the query sets would cost
    a forward pass as large as the query pass itself), so ``model.eval()`` still means something.
    """

    # True for learners whose inner step sizes are meta-parameters (Meta-SGD, MAML++ LSLR): they
    # adapt with their own rates and ignore a scalar ``inner_lr`` given at evaluation.
    learned_rates: bool = False

    def __init__(
        self,
        model: nn.Module,
        inner_lr: InnerLR,
        inner_steps: int = 1,
        first_order: bool = False,
        loss_fn: str | LossFn | TaskLoss = "auto",
        batching: str | Batching = "auto",
        chunk_size: int | None = None,
        adapt_names: Sequence[str] | None = None,
        checkpoint_inner: bool = False,
    ) -> None:
        super().__init__()
        inner_steps = check_steps(inner_steps, "inner_steps")  # before the model is touched
        check_inner_lr(inner_lr)
        if has_torch_batch_norm(model):  # stock layers would write buffers inside a grad transform
            exact_batch_norm(model, announce=True)
        self.model = model
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.loss_fn = as_task_loss(loss_fn)
        self.batching_choice = batching
        self.batching = resolve_batching(batching, model, chunk_size, stacker, announce=True)
        self.checkpoint_inner = checkpoint_inner
        self.adapt_names = (select_names(self.params(), adapt_names)
                            if adapt_names is not None else None)

    @property
    def chunk_size(self) -> int | None:
        return self.batching.chunk_size

    def rebatch(self) -> None:
        """Choose the batching again for where the model now is (``auto`` only)."""
        if self.batching_choice == "auto":
            chosen = resolve_batching("auto", self.model, self.batching.chunk_size, stacker)
            if chosen != self.batching:  # the same kind keeps what it learnt (LoopFallback)
                self.batching = chosen

    def rates(self, inner_lr: InnerLR | None = None, steps: int | None = None) -> InnerLR:
        """The inner step sizes to use: ``inner_lr`` if given (checked), else the learner's
        own."""
        return self.inner_lr if inner_lr is None else check_inner_lr(inner_lr)

    def steps_or_default(self, steps: int | None) -> int:
        """The number of inner steps to take: ``steps`` if given (checked), else
        ``inner_steps``."""
        return self.inner_steps if steps is None else check_steps(steps)

    def per_step(self) -> PerStep:
        """Parameters swapped in before each inner step (MAML++'s batch-norm ones); none here."""
        return None

    def set_iteration(self, iteration: int, total: int) -> None:
        """Called by the training loop before each meta-step; annealing variants use it."""

    def params(self) -> dict[str, Tensor]:
        """The meta-parameters theta, by name."""
        return dict(self.model.named_parameters())

    def buffers_dict(self) -> dict[str, Tensor]:
        return dict(self.model.named_buffers())

    def inner_loop(self, steps: int | None = None, inner_lr: InnerLR | None = None,
                   first_order: bool | None = None) -> InnerLoop:
        """The inner loop every task runs: this learner's settings, each one that is given
        replaced (``steps`` and ``inner_lr`` checked)."""
        steps = self.steps_or_default(steps)
        return InnerLoop(self.rates(inner_lr, steps), steps,
                         self.first_order if first_order is None else first_order,
                         self.adapt_names, self.per_step())

    def map_adapted(self, batch: TaskBatch, fn: Callable[[TaskOps, dict, Any], Any],
                    steps: int | None = None, inner_lr: InnerLR | None = None,
                    first_order: bool | None = None) -> Any:
        """``fn(ops, adapted, query)`` of every task after adapting on its support data.

        The outer objective of any task: the query loss (supervised), the adapted policy's
        action distribution on the query trajectories (RL).
        """
        inner = self.inner_loop(steps, inner_lr, first_order)
        return MF.map_adapted(self.model, self.params(), self.buffers_dict(), batch, fn,
                              loss=self.loss_fn, inner=inner, batching=self.batching)

    def observe(self, batch: TaskBatch) -> None:
        """Running statistics of converted batch-norm layers: theta on each task's support
        inputs, outside any transform (once per meta-step; nothing for other models)."""
        if not self.model.training or not running_stat_layers(self.model):
            return
        support = batch.support
        if type(support) is not tuple or len(support) != 2 or not isinstance(support[0], Tensor):
            return
        if self.batching.stacked_forward is stacked_forward:  # all tasks in a few calls
            chunk = self.batching.slices(batch.num_tasks)[0]
            update_running_stats_stacked(self.model, support[0], chunk.stop - chunk.start)
        else:
            update_running_stats(self.model, list(support[0]))

    def meta_loss(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Mean query loss after adaptation; ``.backward()`` fills the model's grads."""
        self.observe(batch)
        steps = self.steps_or_default(steps)
        inner = self.inner_loop(steps)
        if self.checkpoint_inner and not self.first_order and steps > 0:
            return checkpointed_task_losses(  # recompute inner steps in the backward pass
                self.model, self.params(), self.buffers_dict(), batch, loss=self.loss_fn,
                inner=inner, batching=self.batching).mean()
        if self.frees_chunks(steps):  # back-propagate chunk by chunk: memory of one chunk
            return chunked_meta_loss(self.model, self.params(), self.buffers_dict(), batch,
                                     loss=self.loss_fn, inner=inner, batching=self.batching)
        return self.map_adapted(batch, MF.meta.query_value, steps).mean()

    def frees_chunks(self, steps: int) -> bool:
        """Whether ``meta_loss`` back-propagates each chunk of tasks at once and frees its
        graph (``functional/chunked.py``): stacked batching (first or second order), grad mode
        on, step sizes not learned (no per-step parameters). Same gradient, a chunk's memory."""
        learned = any(isinstance(t, Tensor) and t.requires_grad
                      for t in pytree.tree_leaves(self.rates()))
        return (self.batching.kind == "stacked" and torch.is_grad_enabled() and steps > 0
                and not learned and not self.per_step())

    def adapted_params(self, support: Any, steps: int | None = None,
                       inner_lr: InnerLR | None = None) -> tuple[dict[str, Tensor], bool]:
        """Every task's adapted parameters from its support data (leading task dimension; no
        meta-gradient), ``(params, batched)``.

        ``batched`` says whether they carry a task dimension; with no step to take they are
        theta itself. RL uses them to sample the next trajectories.
        """
        steps = self.steps_or_default(steps)
        if steps == 0 or is_zero(self.rates(inner_lr)):
            return {n: p.detach() for n, p in self.params().items()}, False
        with torch.no_grad():
            batch = TaskBatch(support, support)  # the query side is not looked at
            adapted = self.map_adapted(batch, lambda ops, p, q: p, steps, inner_lr, True)
        return {n: t.detach() for n, t in adapted.items()}, True

    def adapt(self, x: Any, y: Any = None, steps: int | None = None,
              inner_lr: InnerLR | None = None) -> dict[str, Tensor]:
        """Adapted parameters for one task from its support set ``(x, y)`` (no task dimension).

        ``x`` alone may be any support data of the task loss (e.g. episodes). Use the result
        with ``torch.func.functional_call(learner.model, params, x)`` or ``learner(x, params)``.
        """
        ops = TaskOps(self.model, self.buffers_dict(), self.loss_fn)
        return MF.adapt(ops, self.params(), x if y is None else (x, y),
                        self.inner_loop(steps, inner_lr))

    def forward(self, x: Any, params: dict[str, Tensor] | None = None) -> Tensor:
        """The model's prediction with ``params`` (adapted ones) or with theta; a tuple or dict
        ``x`` holds several inputs (``functional.task_loss.model_arguments``)."""
        if params is None:
            per_step = self.per_step()
            if not per_step:
                args, kwargs = model_arguments(self.model, x)
                return self.model(*args, **kwargs)
            params = {**self.params(), **per_step[0]}
        return MF.forward(self.model, params, self.buffers_dict(), x)

    @torch.no_grad()
    def adaptation_curve(self, batch: TaskBatch, steps: Sequence[int],
                         metric: str | LossFn | TaskLoss,
                         inner_lr: InnerLR | None = None) -> Tensor:
        """Query ``metric`` of every task after each number of inner steps: ``[steps, tasks]``."""
        steps = check_step_counts(steps)
        return MF.adaptation_curve(
            self.model, self.params(), self.buffers_dict(), batch, loss=self.loss_fn,
            metric=metric, inner=self.inner_loop(max(steps), inner_lr), steps=steps,
            batching=self.batching)


def _from_config(config, args: LearnerArgs) -> MAML:
    return MAML(args.model, inner_lr=args.inner_lr, inner_steps=args.inner_steps,
                first_order=config.first_order, adapt_names=config.adapt, **args.common)


register(LearnerSpec(name="maml", build=_from_config, keys=("first_order", "adapt"),
                     doc="MAML (Finn et al. 2017), second order unless first_order"))
