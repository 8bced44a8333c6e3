"""The meta-RL training loop: sample tasks, adapt, sample again, outer step; logs and checkpoints.

Same run directory as supervised training (``config.yaml``, ``checkpoints/`` with exact resume,
``metrics.jsonl``, ``tensorboard/``), plus ``best/``: the policy with the highest
post-adaptation return on fixed validation tasks, because meta-RL curves can peak and fall.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mamlkit import checkpoint, distributed
from mamlkit import config as config_lib
from mamlkit.build import VAL_SEED
from mamlkit.config import Config
from mamlkit.rl.meta import RLSettings, collect, outer_step
from mamlkit.rl.policy import GaussianPolicy, mean_std
from mamlkit.tasks import generator_from
from mamlkit.train import (
    RunDirectoryError,
    TrainingDiverged,
    TrainResult,
    _Discard,
    _prepare_shared,
    _trim_metrics,
    write_record,
)


def is_rl(config: Config) -> bool:
    return config.task in config_lib.RL_TASKS


def build_env(config: Config):
    from mamlkit.envs import make_batch_env

    kwargs = {} if config.horizon is None else {"horizon": config.horizon}
    return make_batch_env(config.task, **kwargs)


def build_policy(config: Config, env) -> GaussianPolicy:
    """The run's policy; its initial weights come from ``config.seed`` (the "random" policy)."""
    torch.manual_seed(config.seed)
    return GaussianPolicy(env.observation_dim, env.action_dim, config.policy_hidden,
                          config.policy_activation, config.init_std, config.min_std)


def settings_of(config: Config, inner_lr: float | None = None) -> RLSettings:
    return RLSettings(
        inner_lr=config.inner_lr if inner_lr is None else inner_lr,
        inner_steps=max(config.inner_steps, 1), first_order=config.first_order,
        trajectories=config.trajectories, discount=config.discount,
        gae_lambda=config.gae_lambda, outer=config.outer, max_kl=config.max_kl,
        cg_iters=config.cg_iters, cg_damping=config.cg_damping,
        cg_subsample=config.cg_subsample, ppo_clip=config.ppo_clip,
        ppo_epochs=config.ppo_epochs)


def _save_best(run_dir: Path, policy: torch.nn.Module, iteration: int, value: float) -> None:
    """Write ``best/`` (weights and a JSON) under a temporary name and rename it into place."""
    final, tmp = run_dir / "best", run_dir / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()},
              tmp / "model.safetensors")
    (tmp / "best.json").write_text(json.dumps({"iteration": iteration, "val_post": value}))
    old = run_dir / ".best.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _best_value(run_dir: Path) -> float:
    path = run_dir / "best" / "best.json"
    return json.loads(path.read_text())["val_post"] if path.is_file() else -math.inf


def validation(env, policy, config: Config) -> dict[str, float]:
    """Pre- and post-adaptation return on fixed validation tasks, without touching run RNGs."""
    settings = settings_of(config, config.eval_inner_lr or config.inner_lr)
    tasks = env.sample_tasks(config.val_tasks, generator_from(VAL_SEED))
    batch = collect(env, policy, tasks, settings, generator_from(VAL_SEED + 1))
    return {"val_pre": batch.pre_return, "val_post": batch.post_return}


def train_rl(config: Config | None, run_dir: str | Path, resume: bool = False,
             progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Meta-train a policy on the RL task of ``config`` into ``run_dir``.

    ``stop_after`` ends the loop early without a final checkpoint, as a kill would (for tests).
    """
    from torch.utils.tensorboard import SummaryWriter

    from mamlkit.rl.mixed import imitation_meta_loss, sample_imitation

    run_dir = Path(run_dir)
    context = distributed.setup()
    config, resume_from = _prepare_shared(run_dir, config, resume, context)
    reduce = distributed.all_sum if context.distributed else None
    torch.set_num_threads(config.threads)
    env = build_env(config)
    policy = build_policy(config, env)
    settings = settings_of(config)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.meta_lr)
    generator = generator_from(config.seed + 1)
    start = 0
    if resume:
        start = checkpoint.load(resume_from, policy, optimizer, generator)["iteration"]
        if context.is_main:
            _trim_metrics(run_dir / "metrics.jsonl", start)
    best = _best_value(run_dir)
    # only rank 0 writes files; the others log into sinks that keep nothing
    writer = (SummaryWriter(str(run_dir / "tensorboard"), purge_step=start) if context.is_main
              else _Discard())
    metrics = (run_dir / "metrics.jsonl").open("a") if context.is_main else _Discard()
    bar = tqdm(total=config.iterations, initial=start, disable=not progress or not context.is_main,
               desc=run_dir.name, unit="it", dynamic_ncols=True)
    began = time.perf_counter()
    iteration = start
    try:
        for iteration in range(start + 1, config.iterations + 1):
            if stop_after is not None and iteration > stop_after:
                iteration -= 1
                break
            # every rank draws the whole meta-batch's tasks and seeds and samples its share
            tasks = env.sample_tasks(config.meta_batch_size, generator)
            share = distributed.shard(len(tasks), context) if context.distributed else None
            batch = collect(env, policy, tasks, settings, generator, task_slice=share)
            record: dict[str, float | int] = {}
            extra = None
            if config.imitation_tasks:
                demos = sample_imitation(config.imitation_tasks, config.demonstrations,
                                         generator)

                def extra(demos=demos):
                    post, _ = imitation_meta_loss(policy, demos, settings.inner_lr,
                                                  settings.inner_steps, settings.first_order)
                    return config.imitation_weight * post.mean()

                with torch.no_grad():
                    post, pre = imitation_meta_loss(policy, demos, settings.inner_lr,
                                                    settings.inner_steps, True)
                record.update(imitation_pre=pre.mean().item(), imitation_post=post.mean().item())
            stats = outer_step(policy, batch, settings, optimizer, extra, reduce,
                               context.world_size, share, len(tasks))
            pre_return, post_return = _mean_over_ranks(batch, len(tasks), context)
            if not math.isfinite(stats.loss) or not all(
                    torch.isfinite(p).all() for p in policy.parameters()):
                last = checkpoint.latest(run_dir)
                where = f"the last good checkpoint is {last}" if last else "no checkpoint yet"
                raise TrainingDiverged(
                    f"The meta-loss became {stats.loss} at iteration {iteration} ({where}); "
                    "lower meta_lr, max_kl or inner_lr and train again or resume.")
            bar.update(1)
            out_of_time = config.time_limit is not None and distributed.agree(
                time.perf_counter() - began > 60 * config.time_limit)
            last = iteration == config.iterations or out_of_time
            if iteration % config.log_every == 0 or last:
                record.update(pre_return=pre_return, post_return=post_return,
                              std=mean_std(policy), loss=stats.loss, kl=stats.kl,
                              step_fraction=stats.step_fraction)
                bar.set_postfix(pre=f"{pre_return:.4g}", post=f"{post_return:.4g}",
                                refresh=False)
            if context.is_main and (iteration % config.val_every == 0 or last):
                record.update(validation(env, policy, config))
                if record["val_post"] > best:
                    best = record["val_post"]
                    _save_best(run_dir, policy, iteration, best)
            if record:
                write_record(metrics, writer, iteration, began, record)
            if context.is_main and (iteration % config.checkpoint_every == 0 or last):
                checkpoint.save(run_dir, iteration, policy, optimizer, generator)
            if out_of_time:
                print(f"time limit of {config.time_limit} minutes reached at iteration "
                      f"{iteration}; continue with --resume", file=sys.stderr)
                break
    finally:
        bar.close()
        metrics.close()
        writer.close()
    return TrainResult(run_dir, iteration, policy, time.perf_counter() - began)


def _mean_over_ranks(batch, num_tasks: int, context: distributed.Context) -> tuple[float, float]:
    """The meta-batch's mean pre- and post-adaptation returns (each rank holds its tasks')."""
    if not context.distributed:
        return batch.pre_return, batch.post_return
    here = batch.query.mask.shape[0]
    sums = distributed.all_sum(torch.tensor([batch.pre_return * here,
                                             batch.post_return * here], dtype=torch.float64))
    return (sums / num_tasks).tolist()


def load_policy(run_dir: str | Path, which: str = "best") -> tuple[GaussianPolicy, Config, str]:
    """A run's policy: ``best`` (highest validation post-adaptation return, the default when it
    exists) or ``latest``; returns ``(policy, config, description of the checkpoint)``."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunDirectoryError(f"{run_dir} is not a run directory (no config.yaml).")
    config = config_lib.load(run_dir / "config.yaml")
    policy = build_policy(config, build_env(config))
    best = run_dir / "best" / "model.safetensors"
    if which == "best" and best.is_file():
        policy.load_state_dict(load_file(best))
        info = json.loads((run_dir / "best" / "best.json").read_text())
        return policy, config, f"best (iteration {info['iteration']})"
    path = checkpoint.latest(run_dir)
    if path is None:
        raise RunDirectoryError(f"{run_dir} holds no checkpoint yet.")
    checkpoint.load_model(path, policy)
    return policy, config, f"latest ({path.name})"
