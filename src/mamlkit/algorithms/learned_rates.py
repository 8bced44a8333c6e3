"""What learners with meta-learned step sizes (Meta-SGD, MAML++ with LSLR) do when asked for
more inner steps than they were trained for.

The trained steps run as in meta-training. Every further step reuses the last trained step's
rates (and MAML++'s last per-step batch-norm weights), safeguarded: it is taken only where it
lowers the task's support loss, else halved until it does, else skipped
(``functional/safeguard.py``). The rates were learned to land well after ``inner_steps``
steps, not to be repeated; unguarded, ten of Meta-SGD's one-step rates gave NaN on sinusoid.
The extra steps are first order (evaluation and plots need no meta-gradient through them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mamlkit.algorithms.arguments import check_step_counts
from mamlkit.functional.adapt import (
    InnerLoop,
    InnerLR,
    InnerStep,
    Params,
    Steps,
    adapt,
    gradient_step,
)
from mamlkit.functional.batching import TaskOps
from mamlkit.functional.losses import LossFn
from mamlkit.functional.meta import adaptation_curve
from mamlkit.functional.safeguard import safeguarded_step
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.functional.task_loss import TaskLoss

if TYPE_CHECKING:  # the mixin's host, for the checker; at run time a plain mixin
    from mamlkit.algorithms.maml import MAML as _Host
else:
    _Host = object


def trained_then_safeguarded(trained: int) -> InnerStep:
    """The loop's own steps for the ``trained`` steps, safeguarded first-order ones after."""
    def step(ops: Steps, params: Params, support: Any, k: int, inner: InnerLoop) -> Params:
        if k < trained:
            return gradient_step(ops, params, support, k, inner)
        return safeguarded_step(ops, params, support, inner.lr(k),  # type: ignore[arg-type]
                                inner.adapt_names)

    return step


class SafeguardedExtraSteps(_Host):
    """Mixin before ``MAML``: ``adaptation_curve`` and ``adapt`` beyond ``inner_steps`` take
    safeguarded steps with the last trained rates (only where the rates are learned)."""

    @torch.no_grad()
    def adaptation_curve(self, batch: TaskBatch, steps: Sequence[int],
                         metric: str | LossFn | TaskLoss,
                         inner_lr: InnerLR | None = None) -> Tensor:
        """Query ``metric`` of every task after each number of inner steps: ``[steps, tasks]``."""
        steps = check_step_counts(steps)
        if not self.learned_rates:
            return super().adaptation_curve(batch, steps, metric, inner_lr)
        return adaptation_curve(self.model, self.params(), self.buffers_dict(), batch,
                                loss=self.loss_fn, metric=metric,
                                inner=self.inner_loop(max(steps), inner_lr), steps=steps,
                                step=trained_then_safeguarded(self.inner_steps),
                                batching=self.batching)

    def adapt(self, x: Any, y: Any = None, steps: int | None = None,
              inner_lr: InnerLR | None = None) -> dict[str, Tensor]:
        """Adapted parameters for one task: the trained steps as in meta-training (with their
        graph), then safeguarded first-order steps."""
        if not self.learned_rates:
            return super().adapt(x, y, steps, inner_lr)
        ops = TaskOps(self.model, self.buffers_dict(), self.loss_fn)
        return adapt(ops, self.params(), x if y is None else (x, y),
                     self.inner_loop(steps, inner_lr), trained_then_safeguarded(self.inner_steps))


__all__ = ["SafeguardedExtraSteps", "trained_then_safeguarded"]
