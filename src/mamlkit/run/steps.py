"""The per-kind part of the training loop: sample a meta-batch, take the meta-step, report.

``SupervisedStep`` (H = 1: one backward of the learner's meta-loss, an Adam step) and
``RLStep`` (H > 1: sample support trajectories with theta, query ones with theta', then the
TRPO/PPO/Adam outer step through the adaptation; a mixed meta-batch adds supervised imitation
tasks). Both own the learner and its optimizer; the loop in ``loop.py`` owns everything else.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mamlkit.functional.task_batch import TaskBatch
from mamlkit.rl.outer import OuterSettings, outer_step
from mamlkit.rl.policy import mean_std
from mamlkit.run import checkpoint, distributed
from mamlkit.run.adapted import adapted_policy, inner_lr_at_eval, query_actions
from mamlkit.run.build import (
    VAL_SEED,
    build_learner,
    build_network,
    build_tasks,
    device_of,
    is_rl,
)
from mamlkit.run.config import Config
from mamlkit.run.scale import meta_loss_fn, meta_step_backward
from mamlkit.tasks import ImitationTasks, RLTasks, generator_from


class SupervisedStep:
    """H = 1: the learner's meta-loss on a sampled meta-batch, backward, one Adam step."""

    def __init__(self, config: Config, context: distributed.Context, run_dir: Path) -> None:
        self.config, self.context = config, context
        self.device = distributed.local_device(device_of(config), context)
        torch.manual_seed(config.seed)
        model = build_network(config, None).to(self.device)
        self.tasks = build_tasks(config, "train")
        self.val_tasks = build_tasks(config, "val")
        self.learner = build_learner(config, model, self.tasks)
        # theta plus learned meta-parameters (Meta-SGD, MAML++ rates)
        self.optimizer = torch.optim.Adam(self.learner.parameters(), lr=config.meta_lr)
        self.meta_loss = meta_loss_fn(self.learner, config.compile, config.checkpoint_inner)
        self.batch: TaskBatch | None = None

    def update(self, generator: torch.Generator) -> float:
        """One meta-step; every rank samples the whole meta-batch and takes its share."""
        self.batch = self.tasks.sample(self.config.meta_batch_size, generator).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        loss = meta_step_backward(self.meta_loss, self.batch, params, self.context)
        if math.isfinite(loss):
            self.optimizer.step()
        return loss

    def curve(self, batch: TaskBatch) -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):
            steps = [0, max(self.config.inner_steps, 1)]
            curve = self.learner.adaptation_curve(batch, steps, self.tasks.metric,
                                                  inner_lr=inner_lr_at_eval(self.config))
        return {"pre": curve[0].mean().item(), "post": curve[1].mean().item()}

    def log_record(self) -> dict[str, float]:
        """The task metric of the last meta-batch before and after adaptation."""
        if not self.context.is_main or self.batch is None:
            return {}
        curve = self.curve(self.batch)
        return {"train_pre": curve["pre"], "train_post": curve["post"]}

    def validation(self, run_dir: Path, iteration: int) -> dict[str, float]:
        """Pre- and post-adaptation query metric on fixed held-out tasks."""
        with torch.random.fork_rng(devices=[]):
            batch = self.val_tasks.sample(self.config.val_tasks, generator_from(VAL_SEED))
        curve = self.curve(batch.to(self.device))
        return {"val_pre": curve["pre"], "val_post": curve["post"]}

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.4g}"} if "loss" in record else {}


class RLStep:
    """H > 1: support trajectories with theta, query trajectories with theta', outer step.

    ``best/`` keeps the learner with the best validation post-adaptation return, because
    meta-RL curves can peak and fall; evaluation uses it.
    """

    def __init__(self, config: Config, context: distributed.Context, run_dir: Path) -> None:
        self.config, self.context = config, context
        self.tasks = build_tasks(config, "train")
        assert isinstance(self.tasks, RLTasks)
        self.learner = build_learner(config, build_network(config, self.tasks), self.tasks)
        self.optimizer = torch.optim.Adam(self.learner.parameters(), lr=config.meta_lr)
        self.imitation = (ImitationTasks(config.demonstrations) if config.imitation_tasks
                          else None)
        self.settings = OuterSettings(config.outer, config.max_kl, config.cg_iters,
                                      config.cg_damping, config.cg_subsample, config.ppo_clip,
                                      config.ppo_epochs)
        self.reduce = distributed.all_sum if context.distributed else None
        self.best = checkpoint.best_value(run_dir)
        self.last: dict[str, float] = {}

    def steps(self, inner_lr: float | None = None) -> int:
        """Inner steps to sample for: none when the step size is zero (alpha = 0 runs)."""
        rates = self.learner.rates(inner_lr)
        return 0 if isinstance(rates, int | float) and rates == 0 else self.learner.inner_steps

    def update(self, generator: torch.Generator) -> float:
        """Sample, adapt, sample again, outer step; every rank samples its tasks' share."""
        config, learner = self.config, self.learner
        tasks = self.tasks.sample_tasks(config.meta_batch_size, generator)
        share = (distributed.shard(len(tasks), self.context) if self.context.distributed
                 else None)
        rl = self.tasks.collect(tasks, generator, adapted_policy(learner), self.steps(), share)
        extra, self.last = self._imitation(generator)

        def distribution(k: int | None):
            return learner.map_adapted(rl.tasks if k is None else rl.tasks[:k], query_actions)

        stats = outer_step(list(learner.parameters()), distribution, rl.tasks.query,
                           self.settings, self.optimizer, extra, self.reduce,
                           self.context.world_size, share, len(tasks))
        pre, post = self._mean_over_ranks(rl.pre_return, rl.post_return,
                                          rl.tasks.query.mask.shape[0], len(tasks))
        self.last.update(pre_return=pre, post_return=post, std=mean_std(learner.model),
                         kl=stats.kl, step_fraction=stats.step_fraction)
        finite = all(torch.isfinite(p).all() for p in learner.parameters())
        return stats.loss if finite else math.nan

    def _imitation(self, generator: torch.Generator) -> tuple[Any, dict[str, float]]:
        """The weighted meta-loss of a mixed meta-batch's imitation tasks, and their metric."""
        if self.imitation is None:
            return None, {}
        demos = self.imitation.sample(self.config.imitation_tasks, generator)
        weight, learner = self.config.imitation_weight, self.learner

        def extra() -> torch.Tensor:
            return weight * learner.meta_loss(demos)

        curve = learner.adaptation_curve(demos, [0, learner.inner_steps], demos.loss)
        return extra, {"imitation_pre": curve[0].mean().item(),
                       "imitation_post": curve[1].mean().item()}

    def _mean_over_ranks(self, pre: float, post: float, here: int,
                         num_tasks: int) -> tuple[float, float]:
        if not self.context.distributed:
            return pre, post
        sums = distributed.all_sum(torch.tensor([pre * here, post * here], dtype=torch.float64))
        return tuple((sums / num_tasks).tolist())

    def log_record(self) -> dict[str, float]:
        return dict(self.last)

    def validation(self, run_dir: Path, iteration: int) -> dict[str, float]:
        """Pre- and post-adaptation return on fixed validation tasks; keeps ``best/``."""
        inner_lr = inner_lr_at_eval(self.config)
        tasks = self.tasks.sample_tasks(self.config.val_tasks, generator_from(VAL_SEED))
        rl = self.tasks.collect(tasks, generator_from(VAL_SEED + 1),
                                adapted_policy(self.learner, inner_lr), self.steps(inner_lr))
        record = {"val_pre": rl.pre_return, "val_post": rl.post_return}
        if record["val_post"] > self.best:
            self.best = record["val_post"]
            checkpoint.save_best(run_dir, self.learner, iteration, self.best)
        return record

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        if "pre_return" not in record:
            return {}
        return {"pre": f"{record['pre_return']:.4g}", "post": f"{record['post_return']:.4g}"}


def make_step(config: Config, context: distributed.Context, run_dir: Path):
    """The per-kind step of ``config``'s task."""
    return (RLStep if is_rl(config) else SupervisedStep)(config, context, run_dir)


__all__ = ["RLStep", "SupervisedStep", "make_step"]
