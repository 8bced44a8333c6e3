"""MAML++'s multi-step loss: the query loss after every inner step, with annealed weights.

With one-hot weights on the last step and no per-step parameters this is exactly MAML's
meta-loss; the trajectory (``adapt.trajectory``), per-step parameters and batching are MAML's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.functional.adapt import InnerLoop, Params, trajectory
from mamlkit.functional.batching import Batching, TaskOps
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.functional.task_loss import TaskLoss, as_task_loss


def _weighted(losses: dict[int, Tensor], weights: Sequence[float], steps: int) -> Tensor:
    """``[..., 2]``: the weighted sum of step losses and the final one."""
    objective = sum(weights[s - 1] * losses[s] for s in losses if weights[s - 1] != 0)
    return torch.stack([torch.as_tensor(objective).to(losses[steps]), losses[steps]], dim=-1)


def multi_step_losses(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    loss: str | Callable[..., Any] | TaskLoss,
    inner: InnerLoop,
    weights: Sequence[float],
    batching: Batching | str = "vmap",
) -> Tensor:
    """Per task ``[objective, last-step query loss]`` (shape ``[tasks, 2]``).

    ``objective = sum_s weights[s-1] * L_query(theta_s)`` over steps ``s = 1..inner.steps``;
    query losses of steps with weight 0 are not computed.
    """
    steps = inner.steps
    if steps < 1:
        raise ValueError("The multi-step loss needs at least one inner step.")
    wanted = sorted({s for s in range(1, steps + 1) if weights[s - 1] != 0} | {steps})

    def per_task(ops: TaskOps, p: Params, data: Any) -> Tensor:
        support, query = data
        path = list(trajectory(ops, p, support, inner))
        return _weighted({s: ops.value(path[s], query) for s in wanted}, weights, steps)

    batching = batching if isinstance(batching, Batching) else Batching(batching)
    return batching.map(per_task, model, buffers, as_task_loss(batch.loss or loss), params,
                        (batch.support, batch.query))


__all__ = ["multi_step_losses"]
