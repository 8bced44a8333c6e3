"""Batch norm from basic tensor operations, with each task's own batch statistics.

MAML normalises each task with its own support or query batch, as in the paper's network.
Written with ``mean``/``var`` it is exact under ``torch.func.vmap`` at second order, which
``nn.BatchNorm2d`` made vmap-able by ``replace_all_batch_norm_modules_`` is not in torch 2.13,
and it never writes a buffer inside a grad transform (stock ``nn.BatchNorm`` updates its running
statistics in place during the forward pass, which ``torch.func.grad`` refuses).

A stock layer converted by ``exact_batch_norm`` keeps its Parameter objects (an optimizer made
before the conversion still trains them) and its running statistics, the same buffers: they are
never touched by the meta-learning forward passes, and ``update_running_stats`` refreshes them
outside any transform (the learner does it once per meta-step from theta on the support
inputs), so that ``model.eval()`` after meta-training normalises with statistics of theta.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

log = logging.getLogger("mamlkit")


class TaskBatchNorm(nn.Module):
    """Normalise over every dimension but the channel one (dim 1), then scale and shift.

    Training mode (and always without running statistics): the batch's own statistics. With
    ``track_running_stats`` in eval mode: the running statistics, like ``nn.BatchNorm``.
    """

    running_mean: Tensor  # the buffers, with track_running_stats
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True,
                 track_running_stats: bool = False, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.track_running_stats and not self.training:
            mean, var = self.running_mean.view(shape), self.running_var.view(shape)
        else:
            mean = x.mean(dim=dims, keepdim=True)
            var = x.var(dim=dims, unbiased=False, keepdim=True)
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is None or self.bias is None:  # both or neither (affine)
            return out
        return out * self.weight.view(shape) + self.bias.view(shape)

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Fold the statistics of batch ``x`` into the running ones (as ``nn.BatchNorm`` does:
        unbiased variance, ``momentum`` or a cumulative average when it is None)."""
        dims = [d for d in range(x.dim()) if d != 1]
        n = x.numel() // x.shape[1]
        self.fold_in(x.mean(dim=dims), x.var(dim=dims, unbiased=n > 1))

    @torch.no_grad()
    def fold_in(self, mean: Tensor, var: Tensor) -> None:
        """Fold one batch's mean and unbiased variance into the running statistics."""
        self.num_batches_tracked += 1
        rate = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                else self.momentum)
        self.running_mean.lerp_(mean, rate)
        self.running_var.lerp_(var, rate)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}, "
                f"track_running_stats={self.track_running_stats}")


RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _replacement(child: nn.modules.batchnorm._BatchNorm) -> TaskBatchNorm:
    """A ``TaskBatchNorm`` holding ``child``'s own Parameter and buffer objects, not copies: an
    optimizer, EMA or any reference made from ``model.parameters()`` before the conversion
    keeps training and seeing them (and their dtype and device are the user's)."""
    track = child.track_running_stats and child.running_mean is not None
    layer = TaskBatchNorm(child.num_features, child.eps, affine=False,
                          track_running_stats=False, momentum=child.momentum)
    if child.affine:
        layer.weight, layer.bias = child.weight, child.bias
    layer.track_running_stats = track
    if track:
        for name in RUNNING_STATS:
            layer.register_buffer(name, getattr(child, name))
    layer.train(child.training)
    return layer


def exact_batch_norm(model: nn.Module, announce: bool = False) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``model`` (in place) by a ``TaskBatchNorm``.

    The new layers hold the stock layers' own affine Parameters and running-statistics buffers
    (the same objects); the meta-learning forward passes use per-task batch statistics.
    ``announce`` logs one line naming what was replaced.
    """
    replaced: list[str] = []
    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, name, _replacement(child))
                replaced.append(f"{prefix}.{name}" if prefix else name)
    if announce and replaced:
        log.warning("mamlkit: %d nn.BatchNorm layer(s) of %s (%s) now use per-task batch "
                    "statistics (TaskBatchNorm); running statistics are kept, updated once per "
                    "meta-step outside the gradient, and used by model.eval().", len(replaced),
                    type(model).__name__, _names(replaced))
    return model


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown
                                       else "")


def running_stat_layers(model: nn.Module) -> list[TaskBatchNorm]:
    return [m for m in model.modules() if isinstance(m, TaskBatchNorm) and m.track_running_stats]


@torch.no_grad()
def update_running_stats(model: nn.Module, inputs: Iterable[Tensor]) -> None:
    """Refresh the running statistics of ``model``'s tracking ``TaskBatchNorm`` layers from
    forward passes of the model's own parameters on each batch in ``inputs`` (one task each),
    outside any gradient transform."""
    layers = running_stat_layers(model)
    if not layers:
        return
    hooks = [layer.register_forward_pre_hook(lambda m, args: m.observe(args[0]))
             for layer in layers]
    try:
        for x in inputs:
            model(x)
    finally:
        for hook in hooks:
            hook.remove()


__all__ = ["TaskBatchNorm", "exact_batch_norm", "running_stat_layers",
           "update_running_stats"]
