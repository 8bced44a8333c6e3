"""The training step of the pretrained baseline (``algorithm: pretrained``).

Each iteration draws the meta-batch MAML would draw (same sampler, same generator: the same
images, so the same budget in images seen) with global class labels, and takes one Adam step
(``meta_lr``) on the cross-entropy of the global head. The loop (checkpoints, exact resume,
metrics, validation, torchrun) is the one of every run; validation reports the three baselines
on the fixed held-out tasks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mamlkit.functional.task_batch import TaskBatch
from mamlkit.run.learner import Pretrains
from mamlkit.run.steps import SupervisedStep
from mamlkit.tasks.classification import ClassificationTasks
from mamlkit.tasks.global_labels import sample_global


class PretrainStep(SupervisedStep):
    """One Adam step on the global-label cross-entropy of a meta-batch's images."""

    learner: Pretrains

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.learner.training_parameters())

    def objective(self):
        return self.learner.pretrain_loss

    def sample(self, generator: torch.Generator) -> TaskBatch:
        """The meta-batch MAML would draw, relabelled with global class ids."""
        assert isinstance(self.tasks, ClassificationTasks)  # the pretrained baseline's rule
        return sample_global(self.tasks, self.config.meta_batch_size, generator)

    def log_record(self) -> dict[str, float]:
        """The global-label accuracy of the last batch's images (a training curve)."""
        if not self.context.is_main or self.batch is None:
            return {}
        with torch.no_grad():
            _, correct = self.learner.global_sums(self.batch)
        images = self.batch.support[1].numel() + self.batch.query[1].numel()
        return {"train_global_accuracy": correct.sum().item() / images}

    def validation(self, run_dir: Path, iteration: int) -> dict[str, float]:
        """Fine-tuning before and after ``inner_steps`` steps (``val_pre``, ``val_post``), and
        the linear head and nearest mean, on the fixed held-out tasks."""
        record = super().validation(run_dir, iteration)
        learner = self.learner
        assert isinstance(learner, Pretrains)

        def accuracy(part: TaskBatch) -> torch.Tensor:
            values = learner.frozen_accuracy(part)
            return torch.stack([values[name] for name in learner.frozen_names])

        frozen = self.validation_curve(accuracy).values
        return {**record, **{f"val_{name.replace(' ', '_')}": value.mean().item()
                             for name, value in zip(learner.frozen_names, frozen, strict=True)}}


__all__ = ["PretrainStep"]
