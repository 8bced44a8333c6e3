"""Task distributions: each returns TaskBatch stacks of support and query data."""

from mamlkit.tasks.base import TaskDistribution, generator_from
from mamlkit.tasks.batch import TaskBatch
from mamlkit.tasks.classification import ClassificationTasks, omniglot_tasks
from mamlkit.tasks.sinusoid import Sinusoid

__all__ = ["Sinusoid", "TaskBatch", "TaskDistribution", "generator_from"]
__all__ += ["ClassificationTasks", "omniglot_tasks"]
