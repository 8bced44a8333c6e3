"""The meta-RL evaluation protocol: average return before and after 1..k policy-gradient steps.

Every run is evaluated on the same held-out tasks (``EVAL_SEED``) with the same sampling noise,
and each figure is the mean over tasks with its 95% confidence interval. Beside the run, the
"random" policy is the run's untrained initial policy (same architecture and seed, iteration 0),
adapted with the same protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mamlkit.build import EVAL_SEED
from mamlkit.config import Config
from mamlkit.evaluate import mean_ci95
from mamlkit.rl.meta import RLSettings, inner_update, rl_data
from mamlkit.rl.policy import policy_params, sampling_fn
from mamlkit.tasks import generator_from

EVAL_CHUNK = 20  # tasks sampled together; fixed so that runs see the same tasks and noise


def adaptation_returns(env, policy: nn.Module, tasks: list[dict], settings: RLSettings,
                       steps: list[int], generator: torch.Generator,
                       keep_episodes: bool = False) -> tuple[torch.Tensor, list]:
    """Average return per task ``[len(steps), T]`` of trajectories sampled after each number
    of inner steps (fresh trajectories after every step, as in training)."""
    from mamlkit.rl.sampling import sample_episodes

    params, batched = policy_params(policy), False
    rows, kept = {}, []
    for k in range(max(steps) + 1):
        episodes = sample_episodes(env, sampling_fn(policy, params, batched), tasks,
                                   settings.trajectories, generator, settings.horizon)
        if k in steps:
            rows[k] = episodes.task_returns()
            if keep_episodes:
                kept.append(episodes)
        if k < max(steps) and settings.inner_lr > 0:
            with torch.no_grad():
                params = inner_update(policy, params, batched,
                                      rl_data(episodes, settings.discount, settings.gae_lambda),
                                      settings.inner_lr, first_order=True)
            batched = True
    return torch.stack([rows[k] for k in steps]), kept


def evaluate_policy(env, policy: nn.Module, config: Config, num_tasks: int | None = None,
                    steps: list[int] | None = None,
                    inner_lr: float | None = None) -> dict[str, Any]:
    """``{"metric": "return", "num_tasks", "inner_lr", "steps": {"k": {"mean", "ci95"}}}``."""
    from mamlkit.train_rl import settings_of

    num_tasks = num_tasks or config.eval_tasks
    steps = steps or config.eval_steps
    inner_lr = inner_lr if inner_lr is not None else (config.eval_inner_lr or config.inner_lr)
    settings = settings_of(config, inner_lr)
    tasks = env.sample_tasks(num_tasks, generator_from(EVAL_SEED))
    generator = generator_from(EVAL_SEED + 1)
    chunk = EVAL_CHUNK  # fixed, not the meta-batch size: every run draws the same noise
    curves = [adaptation_returns(env, policy, tasks[i:i + chunk], settings, steps, generator)[0]
              for i in range(0, num_tasks, chunk)]
    curve = torch.cat(curves, dim=1)
    return {"metric": "return", "num_tasks": num_tasks, "inner_lr": inner_lr,
            "steps": {str(s): mean_ci95(curve[i]) for i, s in enumerate(steps)}}


def evaluate_run(run_dir: str | Path, num_tasks: int | None = None,
                 with_random: bool = True) -> dict[str, Any]:
    """The run's policy (best checkpoint if any) and, under ``"random_policy"``, its untrained
    initial policy, on the same held-out tasks."""
    from mamlkit.train_rl import build_env, build_policy, load_policy

    policy, config, which = load_policy(run_dir)
    torch.set_num_threads(config.threads)
    env = build_env(config)
    result = evaluate_policy(env, policy, config, num_tasks)
    result["checkpoint"] = which
    if with_random:
        result["random_policy"] = evaluate_policy(env, build_policy(config, env), config,
                                                  num_tasks)
    return result


def cmd_eval_rl(args) -> int:
    """``mamlkit eval`` for meta-RL runs: the table of returns, the random policy beside them."""
    from mamlkit import evaluate
    from mamlkit.train_rl import is_rl, load_policy

    results: dict[str, dict[str, Any]] = {}
    random_policy = None
    for run in args.runs:
        _, config, _ = load_policy(run)
        if not is_rl(config):
            from mamlkit.config import ConfigError

            raise ConfigError(f"{run} is not a meta-RL run; evaluate RL and supervised runs "
                              "separately.")
        result = evaluate_run(run, args.tasks, with_random=True)
        evaluate.write(Path(run), result)
        results[Path(run).name] = result
        random_policy = random_policy or result["random_policy"]
    if random_policy is not None:
        results["random (untrained init)"] = random_policy
    print(evaluate.format_table(results))
    return 0
