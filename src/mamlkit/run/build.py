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


def build_model(config: Config, image_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """The network of a supervised task; image models take the images' ``(C, H, W)``.

    Omniglot (28x28) gets the paper's strided Conv4; a folder of images its max-pool form
    (the paper's MiniImagenet network), sized to the images.
    """
    if config.model == "mlp":
        out = 1 if config.task == "sinusoid" else config.ways
        return mlp([1, *config.hidden, out])
    if config.model == "conv4":
        hidden = config.hidden[0] if config.hidden else 64
        if image_shape is None or config.task == "omniglot":
            return Conv4(ways=config.ways, hidden=hidden)
        channels, height, width = image_shape
        if height != width:
            raise ConfigError(f"conv4 needs square images; these are {height}x{width}: set "
                              "image_size to resize them.")
        return Conv4(ways=config.ways, in_channels=channels, hidden=hidden, image_size=height,
                     max_pool=True)
    if config.model == "resnet12":
        from mamlkit.models import ResNet12

        channels = image_shape[0] if image_shape is not None else 1
        return ResNet12(config.ways, in_channels=channels)
    raise ConfigError(f"Unknown model {config.model!r}; choose mlp, conv4 or resnet12.")


RL_EXTRA = "The RL presets need the rl extra: pip install 'mamlkit[rl]'."


def build_env(config: Config):
    """The batched environment of an RL task; a missing simulator (the ``rl`` extra, which
    ``pip install mamlkit`` leaves out) is one sentence, another import error names itself."""
    try:
        import gymnasium  # noqa: F401

        if config.task.startswith(("cheetah", "ant")):
            import mujoco  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError(RL_EXTRA) from None
    except ImportError as error:  # installed but broken (a library of MuJoCo's, say)
        raise ConfigError(f"task {config.task} needs gymnasium and MuJoCo, which do not "
                          f"import ({error}); reinstall them with pip install "
                          "'mamlkit[rl]'.") from None
    from mamlkit.envs import make_batch_env

    return make_batch_env(config.task, **env_kwargs(config))


def env_kwargs(config: Config) -> dict:
    """The batched environment's keyword arguments that the config sets (defaults left out)."""
    kwargs: dict = {} if config.horizon is None else {"horizon": config.horizon}
    if config.task == "nav2d" and config.action_scale != 1.0:
        kwargs["action_scale"] = config.action_scale
    return kwargs


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


def build_tasks(config: Config, split: str = "train") -> TaskDistribution | RLTasks:
    """The task distribution of ``split`` (train, val or test) for this run."""
    if is_rl(config):
        from mamlkit.rl.estimators import inner_loss

        return RLTasks(build_env(config), config.trajectories, config.horizon, config.discount,
                       config.gae_lambda, loss=inner_loss(config.estimator),
                       pool=build_sampler_pool(config), baseline_fit=config.baseline_fit)
    if config.task == "sinusoid":
        return Sinusoid(shots=config.shots, query_shots=config.query_shots)
    if config.task == "omniglot":
        return _omniglot(config, split)
    if config.task == "folder":
        return _folder(config, split)
    if config.task == "custom":
        return _custom().split(split)
    raise ConfigError(f"Unknown task {config.task!r}.")


def _custom():
    """The tasks and model a ``custom`` run was given from Python."""
    from mamlkit.run.custom import active

    components = active()
    if components is None:
        raise ConfigError("This run's tasks and model come from Python (task: custom); train, "
                          "load and evaluate it with mamlkit.run.custom.train/load/evaluate.")
    return components


def _folder(config: Config, split: str) -> TaskDistribution:
    """Tasks from a folder of class sub-folders, split into train/val/test classes."""
    import yaml

    from mamlkit.data import DataError
    from mamlkit.tasks.classification import folder_tasks

    if config.data_root is None:
        raise ConfigError("task folder needs its images: pass --data-root DIR (a folder, or a "
                          ".zip, with one sub-folder of images per class).")
    class_split: list[float] | dict = config.class_split
    if config.class_split_file is not None:
        try:
            class_split = yaml.safe_load(open(config.class_split_file, encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"class_split_file {config.class_split_file!r} could not be read "
                              f"({error}).") from None
        if not isinstance(class_split, dict):
            raise ConfigError(f"class_split_file {config.class_split_file!r} must map train, "
                              "val and test to lists of class names.")
    try:
        return folder_tasks(config.data_root, config.ways, config.shots,
                            config.query_shots or config.shots, split=split,
                            class_split=class_split, image_size=config.image_size,
                            channels=config.channels, invert=config.invert)
    except (ValueError, DataError) as error:
        raise ConfigError(str(error)) from None


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
    if config.task == "custom":
        return _custom().model
    data = getattr(tasks, "data", None)
    return build_model(config, data.image_shape if data is not None else None)


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
        if config.algorithm == "pretrained":
            return _pretrained(config, model, common)
        if config.algorithm == "imaml":
            return IMAML(model, lr, steps, lam=config.imaml_lambda, cg_steps=config.cg_steps,
                         max_grad_norm=config.imaml_max_grad_norm, solver=config.imaml_solver,
                         tol=config.imaml_tol, **common)
        return MAML(model, inner_lr=lr, inner_steps=steps, first_order=fo,
                    adapt_names=config.adapt, **common)
    except ValueError as error:  # e.g. an adapt pattern that matches no parameter
        raise ConfigError(str(error)) from None


def _pretrained(config: Config, model: nn.Module, common: dict) -> MAML:
    """The pretrained baseline: its global head has a row per meta-training class (those of
    the train split, whichever split the caller built)."""
    from mamlkit.algorithms.pretrained import Pretrained

    classes = build_tasks(config, "train").num_classes
    return Pretrained(model, classes, config.inner_lr, config.inner_steps, adapt_names=config.adapt,
                      head_steps=config.head_steps, head_weight_decay=config.head_weight_decay,
                      **common)


def device_of(config: Config) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)
