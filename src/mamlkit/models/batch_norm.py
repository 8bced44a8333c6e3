"""Batch norm from basic tensor operations, always with the current batch's statistics.

MAML normalises each task with its own support or query batch (no running statistics). Written
with ``mean``/``var`` it is exact under ``torch.func.vmap`` at second order, which
``nn.BatchNorm2d`` made vmap-able by ``replace_all_batch_norm_modules_`` is not in torch 2.13.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskBatchNorm(nn.Module):
    """Normalise over every dimension but the channel one (dim 1), then scale and shift."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, unbiased=False, keepdim=True)
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is None:
            return out
        shape = [1, -1] + [1] * (x.dim() - 2)
        return out * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


def exact_batch_norm(model: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``model`` (in place) by a ``TaskBatchNorm``.

    Affine weights are copied; running statistics are dropped, as MAML uses batch statistics.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            replacement = TaskBatchNorm(child.num_features, child.eps, child.affine)
            if child.affine:
                with torch.no_grad():
                    replacement.weight.copy_(child.weight)
                    replacement.bias.copy_(child.bias)
            replacement.to(next(child.parameters(), torch.empty(0)).device)
            setattr(model, name, replacement)
        else:
            exact_batch_norm(child)
    return model


def has_torch_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
