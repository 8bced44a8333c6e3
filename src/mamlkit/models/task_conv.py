"""Task-stacked layers: the same layer for many tasks at once, each task with its own weights.

Under ``vmap`` per-task weights turn each convolution into a grouped one in NCHW layout, which is
slow on CPU, and ``F.batch_norm`` gives wrong second-order gradients. Here the task dimension is
folded into the channels explicitly: activations of ``T`` tasks are one ``[N, T*C, H, W]`` tensor
(channels-last for large batches), a convolution is one grouped call with ``groups=T``, and batch
norm over ``T*C`` channels is exactly per-task batch norm (statistics over
``N, H, W`` of each task's channel) in one fused call whose second-order gradients are exact
outside ``vmap``. Tasks never mix, so the gradient of the sum of the per-task losses with respect
to stacked weights is every task's own gradient.

All weights here carry a leading task dimension ``T``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mamlkit.functional.batch_norm import batch_norm

# Channels-last pays off for calls with many images (75-image query sets: whole meta-steps
# 1.15-1.25x faster than NCHW on CPU); for a handful (5-image support sets with their second-order
# backward) oneDNN's NCHW kernels are faster (5 second-order steps: channels-last everywhere was
# 1.15x slower than this split). Measured with benchmarks/conv_batching.py (stacked, -cl, -nchw).
CHANNELS_LAST_MIN_BATCH = 16


def tasks_to_channels(x: Tensor, channels_last: bool | None = None) -> Tensor:
    """``[T, N, C, H, W]`` -> ``[N, T*C, H, W]`` (one copy).

    Channels-last memory if ``channels_last``, or by default when ``N >= CHANNELS_LAST_MIN_BATCH``.
    Later layers keep the layout they are given.
    """
    t, n, c, h, w = x.shape
    if channels_last is None:
        channels_last = n >= CHANNELS_LAST_MIN_BATCH
    if not channels_last:
        return x.transpose(0, 1).reshape(n, t * c, h, w)
    nhwtc = x.permute(1, 3, 4, 0, 2).contiguous()
    return nhwtc.view(n, h, w, t * c).permute(0, 3, 1, 2)


def channels_to_tasks(x: Tensor, tasks: int) -> Tensor:
    """``[N, T*C, ...]`` -> ``[T, N, C * prod(...)]``: per-task features, flattened like NCHW."""
    n = x.shape[0]
    return x.reshape(n, tasks, -1).transpose(0, 1)


def stacked_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int | tuple[int, int],
                   padding: int | tuple[int, int]) -> Tensor:
    """Each task's conv: ``x`` is ``[N, T*C, H, W]``, ``weight`` ``[T, O, C, kh, kw]``."""
    tasks = weight.shape[0]
    flat_w = weight.reshape(tasks * weight.shape[1], *weight.shape[2:])
    flat_b = None if bias is None else bias.reshape(-1)
    return F.conv2d(x, flat_w, flat_b, stride=stride, padding=padding, groups=tasks)


def stacked_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                       eps: float) -> Tensor:
    """Per-task batch norm with batch statistics: ``x`` is ``[N, T*C, ...]``, weights ``[T, C]``.

    The same function as ``TaskBatchNorm`` on every task (biased variance, no running stats).
    On CPU its second derivative is ``functional.batch_norm``'s closed form (second-order
    meta-steps up to 1.46x faster; CUDA keeps torch's, not measured there).
    """
    flat_w = None if weight is None else weight.reshape(-1)
    flat_b = None if bias is None else bias.reshape(-1)
    if flat_w is not None and flat_b is not None and x.device.type == "cpu":
        return batch_norm(x, flat_w, flat_b, eps)
    return F.batch_norm(x, None, None, flat_w, flat_b, training=True, momentum=0.0, eps=eps)


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Each task's linear layer: ``x`` ``[T, N, F]``, ``weight`` ``[T, O, F]`` -> ``[T, N, O]``."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


__all__ = ["CHANNELS_LAST_MIN_BATCH", "channels_to_tasks", "stacked_batch_norm", "stacked_conv2d",
           "stacked_linear", "tasks_to_channels"]
