"""The training step of the pretrained baseline (``algorithm: pretrained``).

Each iteration draws the meta-batch MAML would draw (same sampler, same generator: the same
images, so the same budget in images seen) with global class labels, and takes one Adam step
(``meta_lr``) on the cross-entropy of the global head. The loop (checkpoints, exact resume,
metrics, validation, torchrun) is the one of every run; validation reports the three baselines
on the fixed held-out tasks.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mamlkit.run import distributed
from mamlkit.run.build import VAL_SEED, build_learner, build_network, build_tasks, device_of
from mamlkit.run.config import Config
from mamlkit.run.scale import meta_step_backward
from mamlkit.run.steps import SupervisedStep
from mamlkit.tasks import generator_from
from mamlkit.tasks.global_labels import sample_global


class PretrainStep(SupervisedStep):
    """One Adam step on the global-label cross-entropy of a meta-batch's images."""

    def __init__(self, config: Config, context: distributed.Context, run_dir: Path) -> None:
        self.config, self.context = config, context
        self.device = distributed.local_device(device_of(config), context)
        self.tasks = build_tasks(config, "train")  # draws no random numbers
        self.val_tasks = build_tasks(config, "val")
        torch.manual_seed(config.seed)
        model = build_network(config, self.tasks).to(self.device)
        self.learner = build_learner(config, model, self.tasks)
        self.optimizer = torch.optim.Adam(self.learner.training_parameters(), lr=config.meta_lr)
        self.batch = None

    def update(self, generator: torch.Generator) -> float:
        """One step on the meta-batch's images; every rank samples it and takes its share of
        the tasks, as ``SupervisedStep`` does."""
        self.batch = sample_global(self.tasks, self.config.meta_batch_size,
                                   generator).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        params = self.learner.training_parameters()
        loss = meta_step_backward(self.learner.pretrain_loss, self.batch, params, self.context)
        if math.isfinite(loss):
            self.optimizer.step()
        return loss

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
        with torch.random.fork_rng(devices=[]):
            batch = self.val_tasks.sample(self.config.val_tasks, generator_from(VAL_SEED))
        frozen = self.learner.frozen_accuracy(batch.to(self.device))
        return {**record, **{f"val_{name.replace(' ', '_')}": value.mean().item()
                             for name, value in frozen.items()}}


__all__ = ["PretrainStep"]
