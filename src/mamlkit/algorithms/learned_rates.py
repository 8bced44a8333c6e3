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
from typing import Any

import torch
from torch import Tensor

from mamlkit.algorithms.arguments import check_step_counts
from mamlkit.functional.adapt import InnerLR, step_size
from mamlkit.functional.batching import TaskOps
from mamlkit.functional.losses import LossFn
from mamlkit.functional.meta import StepFn, at_step, curve_over_steps
from mamlkit.functional.safeguard import safeguarded_step
from mamlkit.functional.task_batch import TaskBatch, support_at
from mamlkit.functional.task_loss import TaskLoss


def trained_then_safeguarded(trained: int, inner_lr: InnerLR,
                             adapt_names: Sequence[str] | None = None) -> StepFn:
    """Plain first-order steps for the ``trained`` steps, safeguarded ones after them."""
    def step_fn(ops, theta, adapted, support, step):
        lr = step_size(inner_lr, step)
        if step < trained:
            return ops.step(adapted, support, lr, True, adapt_names)
        return safeguarded_step(ops, adapted, support, lr, adapt_names)

    return step_fn


class SafeguardedExtraSteps:
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
        step_fn = trained_then_safeguarded(self.inner_steps, self.rates(inner_lr, max(steps)),
                                           self.adapt_names)
        return curve_over_steps(self.model, self.params(), self.buffers_dict(), batch,
                                loss=self.loss_fn, metric=metric, step_fn=step_fn, steps=steps,
                                per_step=self.per_step(), batching=self.batching)

    def adapt(self, x: Any, y: Any = None, steps: int | None = None,
              inner_lr: InnerLR | None = None) -> dict[str, Tensor]:
        """Adapted parameters for one task: the trained steps as in meta-training (with their
        graph), then safeguarded first-order steps."""
        steps = self.steps_or_default(steps)
        trained = min(steps, self.inner_steps)
        adapted = super().adapt(x, y, trained, inner_lr)
        if steps == trained or not self.learned_rates:
            return adapted if steps == trained else super().adapt(x, y, steps, inner_lr)
        support = x if y is None else (x, y)
        ops = TaskOps(self.model, self.buffers_dict(), self.loss_fn)
        rates, per_step = self.rates(inner_lr, steps), self.per_step()
        for step in range(trained, steps):
            adapted = safeguarded_step(ops, adapted, support_at(support, step),
                                       step_size(rates, step), self.adapt_names)
            adapted = {**adapted, **at_step(per_step, step + 1)}
        return adapted


__all__ = ["SafeguardedExtraSteps", "trained_then_safeguarded"]
