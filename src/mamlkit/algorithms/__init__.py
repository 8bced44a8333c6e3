"""Layer 6: the learners (MAML and the family), nn.Modules that own the meta-parameters and
call the functional core with the task's loss; supervised and RL tasks go through the same ones."""

from mamlkit.algorithms.anil import ANIL
from mamlkit.algorithms.imaml import IMAML
from mamlkit.algorithms.maml import MAML
from mamlkit.algorithms.mamlpp import MAMLpp
from mamlkit.algorithms.metasgd import MetaSGD
from mamlkit.algorithms.pretrained import Pretrained
from mamlkit.algorithms.reptile import Reptile
from mamlkit.functional.batching import choose_batching

__all__ = ["ANIL", "IMAML", "MAML", "MAMLpp", "MetaSGD", "Pretrained", "Reptile", "choose_batching"]
