"""From a Config to the objects of a run: model or policy, task distributions, learner.

The run's task, environment and learner are looked up by name in the registry
(``run.components``); each builds itself from the config.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from mamlkit.registry import EnvSpec, LearnerArgs, TaskSpec
from mamlkit.run import components
from mamlkit.run.config import Config, ConfigError
from mamlkit.run.custom_task import Components
from mamlkit.run.learner import Learner
from mamlkit.tasks import RLTasks, TaskDistribution

# Held-out tasks of every evaluation are drawn from this seed, so runs compare on the same tasks.
EVAL_SEED = 2017_0309
VAL_SEED = 2017_0310

RL_EXTRA = "The RL presets need the rl extra: pip install 'mamlkit[rl]'."


def _env_spec(config: Config) -> EnvSpec:
    spec = components.task(config.task)
    if not isinstance(spec, EnvSpec):
        raise ConfigError(f"task {config.task} is no environment; RL settings do not apply.")
    return spec


def build_env(config: Config):
    """The batched environment of an RL task; a missing simulator (the ``rl`` extra, which
    ``pip install mamlkit`` leaves out) is one sentence, another import error names itself."""
    spec = _env_spec(config)
    try:
        for module in spec.requires:
            __import__(module)
    except ModuleNotFoundError:
        raise ConfigError(RL_EXTRA) from None
    except ImportError as error:  # installed but broken (a library of MuJoCo's, say)
        raise ConfigError(f"task {config.task} needs {' and '.join(spec.requires)}, which do "
                          f"not import ({error}); reinstall them with pip install "
                          "'mamlkit[rl]'.") from None
    return spec.make(**env_kwargs(config))


def env_kwargs(config: Config) -> dict:
    """The batched environment's keyword arguments that the config sets (defaults left out)."""
    kwargs: dict = {} if config.horizon is None else {"horizon": config.horizon}
    return {**kwargs, **_env_spec(config).options(config)}


def build_sampler_pool(config: Config):
    """``sampler_workers - 1`` worker processes for an RL run's sampling (None: in-process).

    They start at the first sample and stop when the tasks that hold them are released (or
    at exit); the episodes are those of in-process sampling (``rl.workers``)."""
    if config.sampler_workers <= 1:
        return None
    from mamlkit.rl.workers import SamplerPool

    return SamplerPool(config.task, env_kwargs(config), workers=config.sampler_workers - 1)


def build_policy(config: Config, env) -> nn.Module:
    """The run's policy; its initial weights come from ``config.seed`` (the "random" policy)."""
    from mamlkit.rl.policy import GaussianPolicy

    torch.manual_seed(config.seed)
    return GaussianPolicy(env.observation_dim, env.action_dim, config.policy_hidden,
                          config.policy_activation, config.init_std, config.min_std)


def build_tasks(config: Config, split: str = "train",
                given: Components | None = None) -> TaskDistribution | RLTasks:
    """The task distribution of ``split`` (train, val or test) for this run: the registered
    task's own, or the RL tasks of the registered environment; ``given`` holds those of a task
    whose tasks come from Python (``run.custom``)."""
    spec = components.task(config.task)
    if isinstance(spec, TaskSpec):
        if given is not None and spec.in_python:
            return given.split(split)
        return spec.build(config, split)
    from mamlkit.rl.estimators import inner_loss

    return RLTasks(build_env(config), config.trajectories, config.horizon, config.discount,
                   config.gae_lambda, loss=inner_loss(config.estimator),
                   pool=build_sampler_pool(config), baseline_fit=config.baseline_fit)


def build_network(config: Config, tasks: TaskDistribution | RLTasks,
                  given: Components | None = None) -> nn.Module:
    """The network the learner meta-trains: the policy for RL tasks, else the task's model
    (``given``'s, for a task whose model comes from Python)."""
    if isinstance(tasks, RLTasks):
        return build_policy(config, tasks.env)
    spec = components.task(config.task)
    assert isinstance(spec, TaskSpec)
    if given is not None and spec.in_python:
        return given.model
    return spec.network(config, tasks)


def build_learner(config: Config, model: nn.Module, tasks: TaskDistribution | RLTasks,
                  given: Components | None = None) -> Learner:
    """The learner of ``config.algorithm`` (the MAML family) around ``model`` (``given``: the
    components from Python its train split comes from, as in ``build_tasks``).

    RL tasks take at least one inner step (their support trajectories are sampled per step).
    Whether the learner takes RL tasks at all is ``config.check``'s to say.
    """
    steps = max(config.inner_steps, 1) if isinstance(tasks, RLTasks) else config.inner_steps
    args = LearnerArgs(model=model, inner_lr=config.inner_lr, inner_steps=steps,
                       loss_fn=tasks.loss, batching=config.batching,
                       chunk_size=config.chunk_size,
                       train_tasks=lambda: build_tasks(config, "train", given))
    try:
        # the registry holds modules (it sits below run/); every learner has the Learner shape
        return cast(Learner, components.learner(config.algorithm).build(config, args))
    except ValueError as error:  # e.g. an adapt pattern that matches no parameter
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(str(error)) from None


def device_of(config: Config) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)
