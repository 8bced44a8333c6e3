"""mamlkit: model-agnostic meta-learning for any PyTorch nn.Module, on torch.func."""

from mamlkit.algorithms import ANIL, IMAML, MAML, MAMLpp, MetaSGD, Reptile
from mamlkit.tasks import Sinusoid, TaskBatch
from mamlkit.train import load

__version__ = "0.1.0"

__all__ = ["ANIL", "IMAML", "MAML", "MAMLpp", "MetaSGD", "Reptile", "Sinusoid", "TaskBatch",
           "__version__", "load"]
