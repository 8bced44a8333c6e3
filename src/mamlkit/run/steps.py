"""The per-kind part of the training loop: sample a meta-batch, take the meta-step, report.

``SupervisedStep`` (H = 1: one backward of the learner's meta-loss, an Adam step) and
``RLStep`` (H > 1: sample support trajectories with theta, query ones with theta', then the
TRPO/PPO/Adam outer step through the adaptation; a mixed meta-batch adds supervised imitation
tasks). Both own the learner and its optimizer; the loop in ``loop.py`` owns everything else
and chooses the step (``pretrain_step.py`` holds the pretrained baseline's).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from mamlkit.functional.adapt import is_zero
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.rl.outer import OuterSettings, outer_step
from mamlkit.rl.policy import GaussianPolicy, mean_std
from mamlkit.run import checkpoint, distributed
from mamlkit.run.adapted import adapted_policy, inner_lr_at_eval, query_actions
from mamlkit.run.build import VAL_SEED, build_learner, build_network, build_tasks, device_of
from mamlkit.run.config import Config
from mamlkit.run.custom_task import Components
from mamlkit.run.held_out import Curve, HeldOut, ValuesOf, held_out_curve
from mamlkit.run.learner import InnerLr, Learner
from mamlkit.run.metrics import read_metrics
from mamlkit.run.scale import meta_loss_fn, meta_step_backward
from mamlkit.run.stats import mean_ci95
from mamlkit.tasks import ImitationTasks, RLTasks, TaskDistribution


class SupervisedStep:
    """H = 1: the learner's meta-loss on a sampled meta-batch, backward, one Adam step."""

    def __init__(self, config: Config, context: distributed.Context, run_dir: Path,
                 given: Components | None = None) -> None:
        self.config, self.context = config, context
        self.device = distributed.local_device(device_of(config), context)
        tasks = build_tasks(config, "train", given)  # draws no random numbers
        assert not isinstance(tasks, RLTasks)
        self.tasks: TaskDistribution = tasks
        self.val_tasks = build_tasks(config, "val", given)
        torch.manual_seed(config.seed)
        model = build_network(config, self.tasks, given).to(self.device)  # sized to the images
        self.learner: Learner = build_learner(config, model, self.tasks, given)
        self.optimizer = torch.optim.Adam(self.trained_parameters(), lr=config.meta_lr)
        self.meta_loss = self.objective()
        self.batch: TaskBatch | None = None

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """What the outer Adam step updates: theta plus learned meta-parameters (Meta-SGD,
        MAML++ rates)."""
        return list(self.learner.parameters())

    def objective(self):
        """The batch -> loss function whose gradient the step follows."""
        return meta_loss_fn(self.learner, self.config.compile, self.config.checkpoint_inner)

    def sample(self, generator: torch.Generator) -> TaskBatch:
        return self.tasks.sample(self.config.meta_batch_size, generator)

    def update(self, generator: torch.Generator) -> float:
        """One meta-step; every rank samples the whole meta-batch and takes its share."""
        self.batch = self.sample(generator).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        loss = meta_step_backward(self.meta_loss, self.batch, params, self.context)
        if math.isfinite(loss):
            self.optimizer.step()
        return loss

    def curve(self, batch: TaskBatch) -> torch.Tensor:
        """The task metric per task ``[2, T]``, before and after adaptation."""
        with torch.random.fork_rng(devices=[]):
            steps = [0, max(self.config.inner_steps, 1)]
            return self.learner.adaptation_curve(batch, steps, self.tasks.metric,
                                                 inner_lr=inner_lr_at_eval(self.config))

    def log_record(self) -> dict[str, float]:
        """The task metric of the last meta-batch before and after adaptation."""
        if not self.context.is_main or self.batch is None:
            return {}
        curve = self.curve(self.batch)
        return {"train_pre": curve[0].mean().item(), "train_post": curve[1].mean().item()}

    def window_state(self) -> dict[str, Any]:
        """Nothing of the logging window beyond its losses (the loop keeps those)."""
        return {}

    def restore_window(self, state: dict[str, Any]) -> None: ...

    def validation(self, run_dir: Path, iteration: int) -> dict[str, float]:
        """Pre- and post-adaptation query metric on fixed held-out tasks, each with its 95%
        CI (1.96 standard errors over the tasks) for the figures' bands."""
        return _with_ci(self.validation_curve().values)

    def validation_curve(self, values_of: ValuesOf | None = None) -> Curve:
        """The held-out validation tasks, all drawn and adapted at once, before and after
        ``inner_steps`` (at least one) steps; ``values_of`` replaces the adaptation curve."""
        held_out = HeldOut(VAL_SEED, self.config.val_tasks,
                           [0, max(self.config.inner_steps, 1)], inner_lr_at_eval(self.config))
        return held_out_curve(self.learner, self.val_tasks, held_out, self.device, values_of)

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.4g}"} if "loss" in record else {}


class RLStep:
    """H > 1: support trajectories with theta, query trajectories with theta', outer step.

    ``best/`` keeps the learner with the best validation post-adaptation return, because
    meta-RL curves can peak and fall; evaluation uses it.
    """

    def __init__(self, config: Config, context: distributed.Context, run_dir: Path) -> None:
        self.config, self.context = config, context
        tasks = build_tasks(config, "train")
        assert isinstance(tasks, RLTasks)
        self.tasks: RLTasks = tasks
        self.learner: Learner = build_learner(config, build_network(config, self.tasks),
                                              self.tasks)
        self.optimizer = torch.optim.Adam(self.learner.parameters(), lr=config.meta_lr)
        self.imitation = (ImitationTasks(config.demonstrations) if config.imitation_tasks
                          else None)
        self.settings = OuterSettings(config.outer, config.max_kl, config.cg_iters,
                                      config.cg_damping, config.cg_subsample,
                                      config.fisher_product, config.ppo_clip, config.ppo_epochs)
        self.reduce = distributed.all_sum if context.distributed else None
        self.best = checkpoint.best_value(run_dir)
        self.last: dict[str, float] = {}
        self.run_dir = run_dir
        self.env_steps: int | None = None  # so far, over all ranks; read at the first record
        self.window_steps, self.window_seconds = 0, 0.0  # since the last record, this rank

    def steps(self, inner_lr: InnerLr | None = None) -> int:
        """Inner steps to sample for: none when the step size is zero (alpha = 0 runs)."""
        return 0 if is_zero(self.learner.rates(inner_lr)) else self.learner.inner_steps

    def update(self, generator: torch.Generator) -> float:
        """Sample, adapt, sample again, outer step; every rank samples its tasks' share."""
        config, learner, began = self.config, self.learner, time.perf_counter()
        tasks = self.tasks.sample_tasks(config.meta_batch_size, generator)
        share = (distributed.shard(len(tasks), self.context) if self.context.distributed
                 else None)
        rl = self.tasks.collect(tasks, generator, adapted_policy(learner), self.steps(), share)
        self.window_steps += sum(int(e.mask.sum()) for e in [*rl.support_episodes,
                                                              rl.query_episodes] if e is not None)
        extra, self.last = self._imitation(generator)

        def distribution(k: int | None):
            return learner.map_adapted(rl.tasks if k is None else rl.tasks[:k], query_actions)

        stats = outer_step(list(learner.parameters()), distribution, rl.tasks.query,
                           self.settings, self.optimizer, extra, self.reduce,
                           self.context.world_size, share, len(tasks))
        pre, post = self._mean_over_ranks(rl.pre_return, rl.post_return,
                                          rl.tasks.query.mask.shape[0], len(tasks))
        policy = learner.model
        assert isinstance(policy, GaussianPolicy)  # RL runs meta-train build_policy's
        self.last.update(pre_return=pre, post_return=post, std=mean_std(policy),
                         kl=stats.kl, step_fraction=stats.step_fraction)
        finite = all(torch.isfinite(p).all() for p in learner.parameters())
        self.window_seconds += time.perf_counter() - began
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
        """The last meta-step's returns and statistics, and the sampling throughput: valid
        environment steps (support and query sampling of all ranks) so far and per second of
        meta-steps since the last record (validation and checkpoints not counted)."""
        steps = self._window_steps_of_all_ranks()
        if self.env_steps is None:  # resumed runs go on from their last record
            self.env_steps = next((int(r["env_steps"]) for r in reversed(
                read_metrics(self.run_dir)) if "env_steps" in r), 0)
        self.env_steps += steps
        rate = steps / self.window_seconds if self.window_seconds > 0 else 0.0
        self.window_steps, self.window_seconds = 0, 0.0
        return {**self.last, "env_steps": self.env_steps, "env_steps_per_s": round(rate, 1)}

    def _window_steps_of_all_ranks(self) -> int:
        if not self.context.distributed:  # every rank records and saves at the same iterations
            return self.window_steps
        steps = torch.tensor([self.window_steps], dtype=torch.float64)
        return int(distributed.all_sum(steps).item())

    def window_state(self) -> dict[str, Any]:
        """The environment steps (all ranks) and meta-step seconds since the last record, for
        a checkpoint: the next record's ``env_steps`` counts them after a resume too."""
        return {"env_steps": self._window_steps_of_all_ranks(),
                "seconds": self.window_seconds}

    def restore_window(self, state: dict[str, Any]) -> None:
        """Rank 0 carries the saved steps (``log_record`` sums them over the ranks)."""
        self.window_steps = int(state.get("env_steps", 0)) if self.context.is_main else 0
        self.window_seconds = float(state.get("seconds", 0.0))

    def validation(self, run_dir: Path, iteration: int) -> dict[str, float]:
        """Pre- and post-adaptation return on fixed validation tasks, each with its 95% CI
        over the tasks' average returns; keeps ``best/``."""
        inner_lr = inner_lr_at_eval(self.config)
        held_out = HeldOut(VAL_SEED, self.config.val_tasks, [0, self.steps(inner_lr)], inner_lr)
        curve = held_out_curve(self.learner, self.tasks, held_out)
        assert curve.returns is not None
        record = {**_with_ci(curve.values),  # the means over all trajectories, as in training
                  "val_pre": float(curve.returns[0].mean()),
                  "val_post": float(curve.returns[1].mean())}
        if record["val_post"] > self.best:
            self.best = record["val_post"]
            checkpoint.save_best(run_dir, self.learner, iteration, self.best)
        return record

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        if "pre_return" not in record:
            return {}
        shown = {"pre": f"{record['pre_return']:.4g}", "post": f"{record['post_return']:.4g}"}
        if "env_steps_per_s" in record:  # what an RL run's speed is measured in
            shown["env steps/s"] = f"{record['env_steps_per_s']:.0f}"
        return shown


def _with_ci(curve: torch.Tensor) -> dict[str, float]:
    """``val_pre``/``val_post`` and their ``_ci95`` from the per-task metric ``[2, T]``."""
    record = {}
    for key, row in zip(("val_pre", "val_post"), curve, strict=True):
        summary = mean_ci95(row)
        record.update({key: summary["mean"], f"{key}_ci95": summary["ci95"]})
    return record


__all__ = ["RLStep", "SupervisedStep"]
