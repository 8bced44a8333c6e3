"""From a Config to the objects of a run: model or policy, task distributions, learner."""

from __future__ import annotations

import torch
from torch import nn

from mamlkit.algorithms import ANIL, IMAML, MAML, MAMLpp, MetaSGD, Reptile
from mamlkit.functional.task_loss import TaskLoss
from mamlkit.models import Conv4, mlp
from mamlkit.run.config import RL_TASKS, Config, ConfigError
from mamlkit.tasks import RLTasks, Sinusoid, TaskDistribution

# Held-out tasks of every evaluation are drawn from this seed, so runs compare on the same tasks.
EVAL_SEED = 2017_0309
VAL_SEED = 2017_0310


def is_rl(config: Config) -> bool:
    """H > 1: the task is an environment (its batches hold episodes)."""
    return config.task in RL_TASKS


def build_model(config: Config) -> nn.Module:
    if config.model == "mlp":
        out = 1 if config.task == "sinusoid" else config.ways
        return mlp([1, *config.hidden, out])
    if config.model == "conv4":
        return Conv4(ways=config.ways, hidden=config.hidden[0] if config.hidden else 64)
    raise ConfigError(f"Unknown model {config.model!r}; choose mlp or conv4.")


def build_env(config: Config):
    from mamlkit.envs import make_batch_env

    kwargs = {} if config.horizon is None else {"horizon": config.horizon}
    return make_batch_env(config.task, **kwargs)


def build_policy(config: Config, env) -> nn.Module:
    """The run's policy; its initial weights come from ``config.seed`` (the "random" policy)."""
    from mamlkit.rl.policy import GaussianPolicy

    torch.manual_seed(config.seed)
    return GaussianPolicy(env.observation_dim, env.action_dim, config.policy_hidden,
                          config.policy_activation, config.init_std, config.min_std)


def build_tasks(config: Config, split: str = "train") -> TaskDistribution | RLTasks:
    """The task distribution of ``split`` (train, val or test) for this run."""
    if is_rl(config):
        return RLTasks(build_env(config), config.trajectories, config.horizon, config.discount,
                       config.gae_lambda)
    if config.task == "sinusoid":
        return Sinusoid(shots=config.shots, query_shots=config.query_shots)
    if config.task == "omniglot":
        return _omniglot(config, split)
    raise ConfigError(f"Unknown task {config.task!r}.")


def _omniglot(config: Config, split: str) -> TaskDistribution:
    """Omniglot tasks; validation curves use the test characters (no model is selected on them)."""
    from mamlkit.tasks.classification import omniglot_tasks

    if config.data_root is None:
        raise ConfigError(
            "Omniglot needs its data: pass --data-root DIR (a folder holding "
            "images_background.zip and images_evaluation.zip), or add --set download=true."
        )
    try:
        return omniglot_tasks(config.data_root, config.ways, config.shots,
                              config.query_shots or config.shots,
                              split="train" if split == "train" else "test",
                              protocol=config.protocol, download=config.download)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def build_network(config: Config, tasks: TaskDistribution | RLTasks) -> nn.Module:
    """The network the learner meta-trains: the policy for RL tasks, else the model."""
    if isinstance(tasks, RLTasks):
        return build_policy(config, tasks.env)
    return build_model(config)


def build_learner(config: Config, model: nn.Module, tasks: TaskDistribution | RLTasks) -> MAML:
    """The learner of ``config.algorithm`` (the MAML family) around ``model``.

    RL tasks take at least one inner step (their support trajectories are sampled per step).
    """
    loss: str | TaskLoss = tasks.loss
    common = {"loss_fn": loss, "batching": config.batching, "chunk_size": config.chunk_size}
    lr, fo = config.inner_lr, config.first_order
    steps = max(config.inner_steps, 1) if isinstance(tasks, RLTasks) else config.inner_steps
    if isinstance(tasks, RLTasks) and config.algorithm in ("reptile", "imaml"):
        raise ConfigError(f"algorithm {config.algorithm} has no RL form here (its update needs "
                          "query data it can adapt on); choose maml, metasgd, anil or mamlpp.")
    try:
        if config.algorithm == "metasgd":
            return MetaSGD(model, lr, steps, fo, adapt_names=config.adapt, **common)
        if config.algorithm == "anil":
            return ANIL(model, lr, steps, fo, adapt=config.adapt, **common)
        if config.algorithm == "mamlpp":
            return MAMLpp(model, lr, steps, fo, adapt_names=config.adapt, msl=config.msl,
                          msl_iterations=config.msl_iterations, lslr=config.lslr,
                          bnwb=config.bnwb, fo_iterations=config.fo_iterations, **common)
        if config.algorithm == "reptile":
            return Reptile(model, lr, steps, adapt_names=config.adapt,
                           data=config.reptile_data, **common)
        if config.algorithm == "imaml":
            return IMAML(model, lr, steps, lam=config.imaml_lambda, cg_steps=config.cg_steps,
                         max_grad_norm=config.imaml_max_grad_norm, **common)
        return MAML(model, inner_lr=lr, inner_steps=steps, first_order=fo,
                    adapt_names=config.adapt, **common)
    except ValueError as error:  # e.g. an adapt pattern that matches no parameter
        raise ConfigError(str(error)) from None


def device_of(config: Config) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)
