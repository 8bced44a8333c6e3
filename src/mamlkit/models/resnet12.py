"""ResNet-12, the few-shot backbone of MetaOptNet (Lee et al. 2019) and learn2learn.

Written with standard layers only (``TaskBatchNorm`` for batch norm with each task's own
statistics), so that ``models/stacking.py`` runs many tasks in one call without a hand-written
stacked forward: MAML's ``auto`` batching stacks it on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mamlkit.models.batch_norm import TaskBatchNorm


def _conv_bn(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
            TaskBatchNorm(c_out)]


class ResidualBlock(nn.Module):
    """Three 3x3 conv + batch norm (leaky ReLU after the first two), a 1x1 conv + batch norm
    shortcut, their sum through a leaky ReLU, then 2x2 max-pooling."""

    def __init__(self, c_in: int, c_out: int, leaky_slope: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, 3), nn.LeakyReLU(leaky_slope),
                                  *_conv_bn(c_out, c_out, 3), nn.LeakyReLU(leaky_slope),
                                  *_conv_bn(c_out, c_out, 3))
        self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1))
        self.out = nn.Sequential(nn.LeakyReLU(leaky_slope), nn.MaxPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    """4 residual blocks of ``channels`` (64-160-320-640, MetaOptNet's wide variant), global
    average pooling, (dropout,) a linear head with ``ways`` outputs.

    84x84 images (MiniImagenet) end in 5x5 maps before the pooling; any size of at least 16
    works. Convolutions have no bias (batch norm follows each), initialised as in learn2learn.
    """

    def __init__(self, ways: int, in_channels: int = 3,
                 channels: Sequence[int] = (64, 160, 320, 640), leaky_slope: float = 0.1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"ResNet-12 has 4 blocks; got channels={list(channels)}.")
        sizes = [in_channels, *channels]
        self.features = nn.Sequential(*[ResidualBlock(a, b, leaky_slope)
                                        for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(channels[-1], ways)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))


__all__ = ["ResNet12", "ResidualBlock"]
