"""mamlkit: model-agnostic meta-learning for any PyTorch nn.Module, on torch.func."""

from mamlkit.algorithms import MAML
from mamlkit.tasks import Sinusoid, TaskBatch
from mamlkit.train import load

__version__ = "0.1.0"

__all__ = ["MAML", "Sinusoid", "TaskBatch", "__version__", "load"]
