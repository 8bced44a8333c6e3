"""Meta-training tasks with global labels: the data of the pretrained baseline.

The baseline trains the same network as an ordinary classifier over all the meta-training
classes. Its mini-batches are the meta-batches MAML would see (same sampler, same generator,
so the same images and the same budget in images seen), with each label replaced by the id
of its class among the classes on offer (rotations included), instead of a per-task label.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamlkit.functional.task_batch import TaskBatch
from mamlkit.tasks.classification import ClassificationTasks


def to_global(batch: TaskBatch, task_classes: Tensor) -> TaskBatch:
    """``batch`` with every per-task label ``l`` replaced by ``task_classes[task, l]``."""
    (sx, sy), (qx, qy) = batch.support, batch.query
    return TaskBatch((sx, task_classes.gather(1, sy)), (qx, task_classes.gather(1, qy)))


def sample_global(tasks: ClassificationTasks, num_tasks: int,
                  generator: torch.Generator) -> TaskBatch:
    """``num_tasks`` tasks of ``tasks`` (the same draws as ``tasks.sample``) with labels in
    ``0 .. tasks.num_classes - 1``."""
    batch, task_classes = tasks.sample_with_classes(num_tasks, generator)
    return to_global(batch, task_classes)


__all__ = ["sample_global", "to_global"]
