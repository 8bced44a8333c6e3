"""Layer 5: task distributions. H = 1: sinusoid, N-way K-shot classification, imitation; each
returns ``TaskBatch`` stacks. H > 1: RL tasks of an environment, whose batches hold episodes.
Each task distribution a config can name registers itself (``mamlkit.registry.discover``
finds it)."""

from mamlkit.functional.seeding import generator_from
from mamlkit.functional.task_batch import StepData, TaskBatch
from mamlkit.tasks.base import TaskDistribution
from mamlkit.tasks.classification import (
    ClassificationTasks,
    folder_tasks,
    omniglot_tasks,
    split_classes,
)
from mamlkit.tasks.imitation import ImitationTasks
from mamlkit.tasks.rl import RLBatch, RLTasks
from mamlkit.tasks.sinusoid import Sinusoid

__all__ = ["ClassificationTasks", "ImitationTasks", "RLBatch", "RLTasks", "Sinusoid", "StepData",
           "TaskBatch", "TaskDistribution", "folder_tasks", "generator_from", "omniglot_tasks",
           "split_classes"]
