"""Layer 3: algorithms that own the meta-parameters and call the functional core."""

from mamlkit.algorithms.maml import MAML, choose_batching

__all__ = ["MAML", "choose_batching"]
