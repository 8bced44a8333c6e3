"""The four-block convolutional network of Finn et al. 2017 for few-shot image classification."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mamlkit.models.batch_norm import TaskBatchNorm
from mamlkit.models.task_conv import (
    channels_to_tasks,
    stacked_batch_norm,
    stacked_conv2d,
    stacked_linear,
    tasks_to_channels,
)


class Conv4(nn.Module):
    """4 x [3x3 conv with ``hidden`` filters, batch norm, ReLU, downsample], then a linear head.

    Omniglot uses stride-2 convolutions (28 -> 14 -> 7 -> 4 -> 2); ``max_pool=True`` uses
    2x2 max-pooling after stride-1 convolutions instead, as for MiniImagenet. Batch norm uses
    each task's own batch statistics.

    Task stacking: called (through ``functional_call``) with parameters that carry a leading
    task dimension ``T`` and input ``[T, N, C, H, W]``, it returns ``[T, N, ways]``, every task
    with its own parameters, as grouped convolutions (see ``task_conv``). This is what
    ``MAML``'s ``"stacked"`` batching uses; parameter names are those of the plain model.
    """

    supports_task_stacking = True
    # Memory layout of stacked activations: None picks channels-last for large batches only.
    stacked_channels_last: bool | None = None

    def __init__(self, ways: int, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 max_pool: bool = False) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            stride = 1 if max_pool else 2
            blocks += [nn.Conv2d(channels, hidden, 3, stride=stride, padding=1),
                       TaskBatchNorm(hidden), nn.ReLU()]
            if max_pool:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
            channels, size = hidden, (size + 1) // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden * size * size, ways)

    def forward(self, x: Tensor) -> Tensor:
        if self.features[0].weight.dim() == 5:
            return self._forward_stacked(x)
        return self.head(self.features(x).flatten(start_dim=1))

    def _forward_stacked(self, x: Tensor) -> Tensor:
        """Parameters stacked over tasks, ``x`` ``[T, N, C, H, W]`` -> logits ``[T, N, ways]``."""
        tasks = self.features[0].weight.shape[0]
        if x.dim() != 5 or x.shape[0] != tasks:
            raise ValueError(f"Stacked parameters of {tasks} tasks need input [tasks, N, C, H, W];"
                             f" got shape {tuple(x.shape)}.")
        h = tasks_to_channels(x, self.stacked_channels_last)
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                h = stacked_conv2d(h, layer.weight, layer.bias, layer.stride, layer.padding)
            elif isinstance(layer, TaskBatchNorm):
                h = stacked_batch_norm(h, layer.weight, layer.bias, layer.eps)
            elif isinstance(layer, nn.ReLU):
                h = torch.relu_(h)  # batch norm saves its input, not its output: in place is safe
            elif isinstance(layer, nn.MaxPool2d):
                h = layer(h)  # per channel, so per task
            else:
                raise TypeError(f"No task-stacked form for {type(layer).__name__}.")
        return stacked_linear(channels_to_tasks(h, tasks), self.head.weight, self.head.bias)
