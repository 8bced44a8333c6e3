"""Reptile (Nichol et al. 2018): first-order, no query split; theta moves towards theta'."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mamlkit.algorithms.maml import MAML
from mamlkit.functional.adapt import InnerLR
from mamlkit.functional.losses import LossFn
from mamlkit.functional.reptile import adapt_tasks, reptile_direction, surrogate
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.functional.task_loss import TaskLoss
from mamlkit.registry import LearnerArgs, LearnerSpec, register


class Reptile(MAML):
    """Reptile as a learner: ``meta_loss(batch).backward()`` puts mean(theta - theta') in .grad.

    Each task adapts with ``inner_steps`` plain SGD steps of ``inner_lr`` on its support and
    query examples together (``data="all"``, Reptile has no query split) or on the support set
    only (``data="support"``). An optimiser step along the filled-in direction is Reptile's
    update (SGD with lr epsilon is the paper's rule; Adam works on it too). The returned value is
    the mean query loss at the adapted parameters (with ``data="all"`` those saw the query set).
    Batching as for MAML, ``stacked`` included; adaptation at evaluation is plain SGD.
    """

    def __init__(self, model: nn.Module, inner_lr: InnerLR, inner_steps: int = 5,
                 loss_fn: str | LossFn | TaskLoss = "auto", batching: str = "auto",
                 chunk_size: int | None = None, adapt_names: Sequence[str] | None = None,
                 data: str = "all") -> None:
        if data not in ("all", "support"):
            raise ValueError(f"Reptile data must be 'all' or 'support', got {data!r}.")
        super().__init__(model, inner_lr, inner_steps, True, loss_fn, batching, chunk_size,
                         adapt_names)
        self.data = data

    def meta_loss(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Mean query loss after adaptation; its gradient is the Reptile direction."""
        self.observe(batch)
        params = self.params()
        adapted, losses = adapt_tasks(
            self.model, params, self.buffers_dict(), batch, loss=self.loss_fn,
            inner=self.inner_loop(steps), data=self.data, batching=self.batching)
        return surrogate(losses.mean(), params, reptile_direction(params, adapted))


def _from_config(config, args: LearnerArgs) -> Reptile:
    return Reptile(args.model, args.inner_lr, args.inner_steps, adapt_names=config.adapt,
                   data=config.reptile_data, **args.common)


register(LearnerSpec(name="reptile", build=_from_config, rl=False, min_inner_steps=1,
                     keys=("adapt", "reptile_data"),
                     doc="Reptile: first-order, towards the adapted parameters"))
