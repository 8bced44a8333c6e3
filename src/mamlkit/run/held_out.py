"""The one evaluation routine: the task metric of held-out tasks after each number of inner
steps, for validation during training and for ``mamlkit eval`` alike.

The tasks come from a fixed seed, so every run sees the same ones in the same order. Which
tasks are drawn together (``sample_chunk``) and adapted together (``eval_chunk``) decides the
random numbers and the memory, so both are part of the protocol: validation takes all its tasks
at once, evaluation 100 supervised tasks per draw (20 RL tasks per sampling) and a meta-batch
at a time. Supervised tasks report the query metric; RL tasks the average return of fresh
trajectories sampled after each step (trajectory noise from ``seed + 1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mamlkit.functional.task_batch import TaskBatch
from mamlkit.run.adapted import adapted_policy
from mamlkit.run.learner import Learner
from mamlkit.tasks import RLTasks, generator_from

InnerLr = float | list[float] | None
ValuesOf = Callable[[TaskBatch], Tensor]  # a part of the tasks -> its values [rows, T]


@dataclass(frozen=True)
class HeldOut:
    """Which held-out tasks, how many steps, and which of them are drawn and adapted together
    (None: all at once)."""

    seed: int
    num_tasks: int
    steps: Sequence[int]
    inner_lr: InnerLr = None
    sample_chunk: int | None = None
    eval_chunk: int | None = None


@dataclass
class Curve:
    """``values [len(steps), T]``: each task's metric after each number of steps. RL runs also
    keep ``returns [len(steps), T, trajectories]``, whose overall mean is what the paper plots."""

    values: Tensor
    returns: Tensor | None = None


def held_out_curve(learner: Learner, tasks: Any, held_out: HeldOut,
                   device: torch.device | str = "cpu", values_of: ValuesOf | None = None,
                   progress: Callable[[int], Any] | None = None) -> Curve:
    """The curve of ``held_out`` tasks of ``tasks`` (a task distribution or ``RLTasks``).

    ``values_of`` replaces the adaptation curve of supervised tasks (the pretrained baseline's
    frozen heads); ``progress(n)`` hears of every ``n`` tasks done. The global random state is
    left as it was, so validation does not change training.
    """
    with torch.random.fork_rng(devices=[]):
        if isinstance(tasks, RLTasks):
            return _rl_curve(learner, tasks, held_out, progress)
        return _supervised_curve(learner, tasks, held_out, device, values_of, progress)


def _supervised_curve(learner: Learner, tasks: Any, held_out: HeldOut,
                      device: torch.device | str, values_of: ValuesOf | None,
                      progress: Callable[[int], Any] | None) -> Curve:
    generator = generator_from(held_out.seed)
    num_tasks = held_out.num_tasks
    sample_chunk = held_out.sample_chunk or num_tasks
    curves = []
    for start in range(0, num_tasks, sample_chunk):
        batch = tasks.sample(min(sample_chunk, num_tasks - start), generator)
        eval_chunk = held_out.eval_chunk or batch.num_tasks
        for piece in range(0, batch.num_tasks, eval_chunk):
            part = batch[piece:piece + eval_chunk].to(device)
            curves.append(values_of(part) if values_of else learner.adaptation_curve(
                part, list(held_out.steps), tasks.metric, inner_lr=held_out.inner_lr))
            if progress:
                progress(part.num_tasks)
    return Curve(torch.cat(curves, dim=1).cpu())


def _rl_curve(learner: Learner, tasks: RLTasks, held_out: HeldOut,
              progress: Callable[[int], Any] | None) -> Curve:
    steps = list(held_out.steps)
    tasks_drawn = tasks.sample_tasks(held_out.num_tasks, generator_from(held_out.seed))
    generator = generator_from(held_out.seed + 1)
    policy_for = adapted_policy(learner, held_out.inner_lr)
    sampled_after = sorted(set(steps))  # the episodes kept: one per distinct number of steps
    eval_chunk = held_out.eval_chunk or held_out.num_tasks
    values, returns = [], []
    for i in range(0, held_out.num_tasks, eval_chunk):
        chunk = tasks_drawn[i:i + eval_chunk]
        rows, kept = tasks.returns_after_steps(chunk, generator, policy_for, steps,
                                               keep_episodes=True)
        values.append(rows)
        returns.append(torch.stack([kept[sampled_after.index(k)].returns for k in steps]))
        if progress:
            progress(len(chunk))
    return Curve(torch.cat(values, dim=1).cpu(), torch.cat(returns, dim=1).cpu())


__all__ = ["Curve", "HeldOut", "held_out_curve"]
