"""MAML and first-order MAML as an nn.Module that owns the meta-parameters."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mamlkit import functional as MF
from mamlkit.functional.adapt import InnerLR
from mamlkit.functional.checkpointed import checkpointed_task_losses
from mamlkit.functional.losses import LossFn
from mamlkit.functional.select import select_names
from mamlkit.functional.stacked import (
    stacked_adaptation_curve,
    stacked_task_losses,
    supports_task_stacking,
)
from mamlkit.models.batch_norm import has_torch_batch_norm
from mamlkit.tasks.batch import TaskBatch


def choose_batching(model: nn.Module) -> str:
    """The batching strategy we measured to be fastest and exact for this kind of model.

    Models that run many tasks in one call with stacked parameters (``Conv4``) get
    ``"stacked"``: 1.6-2.3x faster than a plain autograd loop on CPU at about 0.6x its peak
    memory (benchmarks/conv_batching.py). For other conv nets per-task weights make ``vmap`` turn
    each convolution into a grouped NCHW one, slower than a loop on CPU, and ``nn.BatchNorm`` under
    ``vmap`` gives inexact second-order gradients: they get the loop. Everything else is batched
    with ``vmap``. On a GPU, ``vmap`` over Conv4 was 18x faster than the plain loop on an H100
    (grouped convolutions are fast there), so models on CUDA without ``nn.BatchNorm`` get it.
    """
    on_gpu = any(p.is_cuda for p in model.parameters())
    if on_gpu and not has_torch_batch_norm(model):
        return "vmap"
    if supports_task_stacking(model) and not has_torch_batch_norm(model):
        return "stacked"
    if has_torch_batch_norm(model) or any(isinstance(m, nn.modules.conv._ConvNd)
                                          for m in model.modules()):
        return "loop"
    return "vmap"


class MAML(nn.Module):
    """Model-agnostic meta-learning around any ``nn.Module``.

    ``inner_lr`` (alpha) may be one number or one per inner step; ``inner_lr=0`` is plain
    multi-task training (the "pretrained" baseline). ``first_order=True`` drops the second-order
    terms. ``batching`` is ``"auto"``, ``"vmap"``, ``"loop"`` or ``"stacked"`` (models with
    ``supports_task_stacking``); ``chunk_size`` bounds how many tasks one ``vmap`` or stacked
    call holds in memory. ``checkpoint_inner=True`` recomputes each inner step in the backward
    pass (second order): memory of one step of one chunk, at the cost of one extra first-order
    step per step (``functional/checkpointed.py``). ``adapt_names`` are glob patterns
    (``["head.*"]``) of the parameters the inner loop adapts (default: all); the others are
    meta-learned in the outer loop only.
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
        loss_fn: str | LossFn = "mse",
        batching: str = "auto",
        chunk_size: int | None = None,
        adapt_names: Sequence[str] | None = None,
        checkpoint_inner: bool = False,
    ) -> None:
        super().__init__()
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}.")
        self.model = model
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.loss_fn = MF.resolve_loss(loss_fn)
        self.batching = choose_batching(model) if batching == "auto" else batching
        if self.batching not in (*MF.BATCHINGS, "stacked"):
            raise ValueError(f"Unknown batching {batching!r}; choose auto, vmap, loop or stacked.")
        if self.batching == "stacked" and not supports_task_stacking(model):
            raise ValueError(f"{type(model).__name__} does not support batching='stacked'; "
                             "choose auto, vmap or loop.")
        if self.batching == "vmap" and has_torch_batch_norm(model):
            warnings.warn(
                "nn.BatchNorm under vmap gives inexact second-order meta-gradients; convert the "
                "model with mamlkit.models.exact_batch_norm(model) or use batching='loop'.",
                stacklevel=2,
            )
        self.chunk_size = chunk_size
        self.checkpoint_inner = checkpoint_inner
        self.adapt_names = (select_names(self.params(), adapt_names)
                            if adapt_names is not None else None)

    def rates(self, inner_lr: InnerLR | None = None) -> InnerLR:
        """The inner step sizes to use: ``inner_lr`` if given, else the learner's own."""
        return self.inner_lr if inner_lr is None else inner_lr

    def set_iteration(self, iteration: int, total: int) -> None:
        """Called by the training loop before each meta-step; annealing variants use it."""

    def params(self) -> dict[str, Tensor]:
        """The meta-parameters theta, by name."""
        return dict(self.model.named_parameters())

    def buffers_dict(self) -> dict[str, Tensor]:
        return dict(self.model.named_buffers())

    def meta_loss(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Mean query loss after adaptation; ``.backward()`` fills the model's grads."""
        steps = self.inner_steps if steps is None else steps
        if self.checkpoint_inner and not self.first_order and steps > 0:
            return checkpointed_task_losses(  # recompute inner steps in the backward pass
                self.model, self.params(), self.buffers_dict(), batch, loss_fn=self.loss_fn,
                inner_lr=self.rates(), steps=steps, adapt_names=self.adapt_names,
                batching=self.batching, chunk_size=self.chunk_size).mean()
        if self.batching == "stacked":
            return stacked_task_losses(
                self.model, self.params(), self.buffers_dict(), batch,
                loss_fn=self.loss_fn, inner_lr=self.rates(),
                steps=self.inner_steps if steps is None else steps,
                first_order=self.first_order, adapt_names=self.adapt_names,
                chunk_size=self.chunk_size,
            ).mean()
        return MF.meta_loss(
            self.model, self.params(), self.buffers_dict(), batch,
            loss_fn=self.loss_fn, inner_lr=self.rates(),
            steps=self.inner_steps if steps is None else steps,
            first_order=self.first_order, adapt_names=self.adapt_names,
            batching=self.batching, chunk_size=self.chunk_size,
        )

    def adapt(self, x: Tensor, y: Tensor, steps: int | None = None,
              inner_lr: InnerLR | None = None) -> dict[str, Tensor]:
        """Adapted parameters for one task from its support set ``(x, y)`` (no task dimension).

        Use them with ``torch.func.functional_call(learner.model, params, x)`` or
        ``learner(x, params)``.
        """
        return MF.adapt(
            self.model, self.params(), self.buffers_dict(), x, y, self.loss_fn,
            self.rates(inner_lr),
            self.inner_steps if steps is None else steps,
            first_order=self.first_order, adapt_names=self.adapt_names,
        )

    def forward(self, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """The model's prediction with ``params`` (adapted ones) or with theta."""
        if params is None:
            return self.model(x)
        return MF.forward(self.model, params, self.buffers_dict(), x)

    @torch.no_grad()
    def adaptation_curve(self, batch: TaskBatch, steps: Sequence[int], metric: str | LossFn,
                         inner_lr: InnerLR | None = None) -> Tensor:
        """Query ``metric`` of every task after each number of inner steps: ``[steps, tasks]``."""
        if self.batching == "stacked":
            return stacked_adaptation_curve(
                self.model, self.params(), self.buffers_dict(), batch,
                loss_fn=self.loss_fn, metric_fn=MF.resolve_metric(metric),
                inner_lr=self.rates(inner_lr), steps=steps,
                adapt_names=self.adapt_names, chunk_size=self.chunk_size,
            )
        return MF.adaptation_curve(
            self.model, self.params(), self.buffers_dict(), batch,
            loss_fn=self.loss_fn, metric_fn=MF.resolve_metric(metric),
            inner_lr=self.rates(inner_lr), steps=steps,
            adapt_names=self.adapt_names, batching=self.batching, chunk_size=self.chunk_size,
        )
