"""Model families that ship with presets; any other nn.Module works as well."""

from mamlkit.models.batch_norm import (
    TaskBatchNorm,
    exact_batch_norm,
    update_running_stats,
)
from mamlkit.models.conv4 import Conv4
from mamlkit.models.mlp import mlp
from mamlkit.models.resnet12 import ResNet12
from mamlkit.models.stacking import Unstackable, compile_stacking, stacked_forward, stacking_problem

__all__ = ["Conv4", "ResNet12", "TaskBatchNorm", "Unstackable", "compile_stacking",
           "exact_batch_norm", "mlp", "stacked_forward",
           "stacking_problem", "update_running_stats"]
