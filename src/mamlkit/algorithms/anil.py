"""ANIL (Raghu et al. 2020): almost no inner loop; only the head adapts to each task."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import nn

from mamlkit.algorithms.maml import MAML
from mamlkit.functional.adapt import InnerLR
from mamlkit.functional.losses import LossFn
from mamlkit.functional.select import last_layer_names
from mamlkit.functional.task_loss import TaskLoss
from mamlkit.registry import LearnerArgs, LearnerSpec, register


class ANIL(MAML):
    """MAML whose inner loop adapts only the parameters matching ``adapt_names`` (glob
    patterns, as for every learner; ``adapt`` is its old, deprecated name).

    The body is meta-learned in the outer loop only, the head adapts per task.
    ``adapt_names=None`` adapts the parameters of the model's last layer (``head.*`` for
    ``Conv4``, the last ``Linear`` of an ``mlp`` or of a policy's mean network); any patterns
    (``["head.*", "features.9.*"]``) work for any module. Works with every batching strategy,
    ``stacked`` included.
    """

    def __init__(self, model: nn.Module, inner_lr: InnerLR, inner_steps: int = 1,
                 first_order: bool = False, loss_fn: str | LossFn | TaskLoss = "auto",
                 batching: str = "auto", chunk_size: int | None = None,
                 adapt_names: Sequence[str] | None = None,
                 adapt: Sequence[str] | None = None) -> None:
        if adapt is not None:
            if adapt_names is not None:
                raise TypeError("ANIL takes adapt_names, or its old name adapt, not both.")
            warnings.warn("ANIL(adapt=...) is now ANIL(adapt_names=...), as for every learner; "
                          "adapt will be removed.", DeprecationWarning, stacklevel=2)
            adapt_names = adapt
        patterns = list(adapt_names) if adapt_names is not None else last_layer_names(model)
        super().__init__(model, inner_lr, inner_steps, first_order, loss_fn, batching,
                         chunk_size, adapt_names=patterns)


def _from_config(config, args: LearnerArgs) -> ANIL:
    return ANIL(args.model, args.inner_lr, args.inner_steps, config.first_order,
                adapt_names=config.adapt, **args.common)


register(LearnerSpec(name="anil", build=_from_config, keys=("first_order", "adapt"),
                     doc="ANIL: the inner loop adapts the last layer only"))
