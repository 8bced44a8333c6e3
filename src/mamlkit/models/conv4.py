"""The four-block convolutional network of Finn et al. 2017 for few-shot image classification."""

from __future__ import annotations

from torch import Tensor, nn

from mamlkit.models.batch_norm import TaskBatchNorm


class Conv4(nn.Module):
    """4 x [3x3 conv with ``hidden`` filters, batch norm, ReLU, downsample], then a linear head.

    Omniglot uses stride-2 convolutions (28 -> 14 -> 7 -> 4 -> 2); ``max_pool=True`` uses
    2x2 max-pooling after stride-1 convolutions instead, as for MiniImagenet. Batch norm uses
    each task's own batch statistics. Standard layers only: ``models/stacking.py`` runs many
    tasks in one call (grouped convolutions, fused batch norm), as for any such model.
    """

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
        return self.head(self.features(x).flatten(start_dim=1))
