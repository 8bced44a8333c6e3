"""Model families that ship with presets; any other nn.Module works as well."""

from mamlkit.models.batch_norm import (
    TaskBatchNorm,
    exact_batch_norm,
    has_torch_batch_norm,
    update_running_stats,
)
from mamlkit.models.conv4 import Conv4
from mamlkit.models.mlp import mlp

__all__ = ["Conv4", "TaskBatchNorm", "exact_batch_norm", "has_torch_batch_norm", "mlp",
           "update_running_stats"]
