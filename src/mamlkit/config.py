"""Run configuration: one flat dataclass, presets from YAML, ``key=value`` overrides with checks."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad preset name, config key or value; the message says what to change."""


@dataclass
class Config:
    """Everything a run needs; the resolved copy is saved as the run's ``config.yaml``."""

    description: str = ""
    task: str = "sinusoid"  # sinusoid | omniglot
    model: str = "mlp"  # mlp | conv4
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    ways: int = 5
    shots: int = 10
    query_shots: int | None = None  # defaults to shots
    data_root: str | None = None  # folder with the dataset's files (omniglot: the two zips)
    protocol: str = "finn"  # omniglot split: finn (1200/423 characters) | lake (alphabets)
    download: bool = False  # fetch missing dataset files from their official source
    inner_lr: float = 0.01
    inner_steps: int = 1
    first_order: bool = False
    meta_lr: float = 0.001
    meta_batch_size: int = 25
    iterations: int = 70000
    seed: int = 0
    batching: str = "auto"  # auto | vmap | loop
    chunk_size: int | None = None
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda
    eval_inner_lr: float | None = None  # fine-tuning step size at evaluation (alpha=0 runs)
    eval_steps: list[int] = field(default_factory=lambda: [0, 1, 2, 5, 10])
    eval_tasks: int = 600
    log_every: int = 100
    val_every: int = 1000
    val_tasks: int = 100
    checkpoint_every: int = 1000
    time_limit: float | None = None  # minutes; stop (with a checkpoint) once exceeded
    # --- algorithm family: Meta-SGD, ANIL, MAML++, Reptile, iMAML ---
    algorithm: str = "maml"  # maml | metasgd | anil | mamlpp | reptile | imaml
    adapt: list[str] | None = None  # glob patterns of inner-loop parameters (anil: last layer)
    msl: bool = True  # mamlpp: multi-step loss with annealed weights
    msl_iterations: int = 1000  # mamlpp: iterations until the MSL weights sit on the last step
    lslr: bool = True  # mamlpp: learned per-layer per-step inner learning rates
    bnwb: bool = True  # mamlpp: per-step batch-norm weights and biases
    fo_iterations: int = 0  # mamlpp: first-order for the first N iterations, then second order
    cosine_meta_lr: bool = False  # any algorithm: cosine annealing of meta_lr to min_meta_lr
    min_meta_lr: float = 0.0
    reptile_data: str = "all"  # reptile: adapt on all examples (all) or the support set only
    imaml_lambda: float = 1.0  # imaml: proximal strength lambda
    cg_steps: int = 5  # imaml: conjugate-gradient steps
    imaml_max_grad_norm: float | None = None  # imaml: clip each inner step's gradient norm
    # --- scale: distributed meta-batches, memory, compiled steps ---
    checkpoint_inner: bool = False  # recompute inner steps in the backward pass (less memory)
    compile: bool = False  # torch.compile the meta-step; falls back to eager where unsupported
    # --- reinforcement learning: environments, sampling, policy, outer step ---
    trajectories: int = 20  # rl: trajectories per task, for the support and the query set each
    horizon: int | None = None  # rl: steps per episode (default: the environment's)
    policy_hidden: list[int] = field(default_factory=lambda: [100, 100])  # rl: Gaussian MLP
    policy_activation: str = "relu"  # rl: relu (paper, 100-100) | tanh (64-64 reimplementation)
    init_std: float = 1.0  # rl: initial standard deviation of the Gaussian policy
    min_std: float = 1e-6  # rl: floor on the policy's standard deviation (see README)
    outer: str = "trpo"  # rl: outer step trpo (paper) | ppo (clip) | adam (meta_lr)
    max_kl: float = 0.01  # rl: TRPO trust region on the adapted policies' KL
    cg_iters: int = 10  # rl: TRPO conjugate-gradient iterations
    cg_damping: float = 1e-5  # rl: TRPO damping of the KL Hessian-vector products
    cg_subsample: float = 1.0  # rl: fraction of the meta-batch's tasks in TRPO's KL Hessian
    ppo_clip: float = 0.2  # rl: PPO ratio clip epsilon
    ppo_epochs: int = 5  # rl: PPO optimisation epochs per meta-batch (Adam, meta_lr)
    discount: float = 0.99  # rl: reward discount gamma
    gae_lambda: float = 1.0  # rl: GAE lambda (1: discounted return minus the linear baseline)
    imitation_tasks: int = 0  # rl: supervised imitation tasks (H=1) added to each meta-batch
    imitation_weight: float = 1.0  # rl: weight of the imitation meta-loss in the sum
    demonstrations: int = 20  # rl: (state, expert action) pairs per imitation support/query set

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` as type ``kind`` (int to float allowed, None for optional keys), else an error."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-6 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return [_coerce(key, v, item) for v in value]
    names = " or ".join(getattr(o, "__name__", str(o)).replace("NoneType", "null")
                        for o in options)
    raise ConfigError(f"Config key {key!r} needs a value of type {names}, got {value!r}.")


def from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    """A Config from ``values`` over ``base``; unknown keys and wrong types raise ConfigError."""
    kinds = field_types()
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ConfigError(
            f"Unknown config key {unknown[0]!r}; valid keys are: {', '.join(sorted(kinds))}."
        )
    resolved = dataclasses.asdict(base or Config())
    resolved.update({k: _coerce(k, v, kinds[k]) for k, v in values.items()})
    return Config(**resolved)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["inner_lr=0", "hidden=[64,64]"]`` -> ``{"inner_lr": 0, "hidden": [64, 64]}``."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"Overrides look like key=value, got {pair!r}.")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            overrides[key.strip()] = text
    return overrides


def preset_dir() -> Path:
    return Path(str(resources.files("mamlkit") / "configs"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def load_preset(name: str) -> Config:
    """A preset's config; a preset may start from another one with ``base: NAME``."""
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"Unknown preset {name!r}; run 'mamlkit presets' to list them "
                          f"({', '.join(preset_names())}).")
    values = yaml.safe_load(path.read_text()) or {}
    base = values.pop("base", None)
    return from_dict(values, load_preset(base) if base else None)


def resolve(preset: str, overrides: dict[str, Any]) -> Config:
    """The preset with overrides applied; the fine-tuning step size of alpha=0 runs is filled in.

    An alpha=0 run cannot adapt with its own step size, so it is evaluated with the preset's
    alpha unless ``eval_inner_lr`` says otherwise: the paper's "pretrained" baseline.
    """
    base = load_preset(preset)
    config = from_dict(overrides, base)
    if config.eval_inner_lr is None:
        config.eval_inner_lr = config.inner_lr if config.inner_lr > 0 else base.inner_lr
    check(config)
    return config


def check(config: Config) -> None:
    positive = ["inner_steps", "meta_batch_size", "iterations", "shots", "ways", "eval_tasks",
                "log_every", "val_every", "checkpoint_every", "threads", "val_tasks"]
    for key in positive:
        if getattr(config, key) < (0 if key == "inner_steps" else 1):
            raise ConfigError(f"Config key {key!r} must be positive, got {getattr(config, key)}.")
    if config.inner_lr < 0 or config.meta_lr <= 0:
        raise ConfigError("inner_lr must be >= 0 and meta_lr > 0.")
    choices = {"batching": ("auto", "vmap", "loop"), "device": ("auto", "cpu", "cuda"),
               "task": ("sinusoid", "omniglot", *RL_TASKS), "model": ("mlp", "conv4"),
               "protocol": ("finn", "lake")}
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise ConfigError(f"Config key {key!r} must be one of {', '.join(allowed)}, "
                              f"got {getattr(config, key)!r}.")
    _check_family(config)
    _check_scale(config)


def _check_scale(config: Config) -> None:
    """The scale keys: chunks of tasks must hold at least one task."""
    if config.chunk_size is not None and config.chunk_size < 1:
        raise ConfigError(f"Config key 'chunk_size' must be positive or null, got "
                          f"{config.chunk_size}.")
    _check_rl(config)


ALGORITHMS = ("maml", "metasgd", "anil", "mamlpp", "reptile", "imaml")


def _check_family(config: Config) -> None:
    """The algorithm-family keys: known algorithm, sensible annealing and solver settings."""
    for key, allowed in {"algorithm": ALGORITHMS, "reptile_data": ("all", "support")}.items():
        if getattr(config, key) not in allowed:
            raise ConfigError(f"Config key {key!r} must be one of {', '.join(allowed)}, "
                              f"got {getattr(config, key)!r}.")
    for key in ("msl_iterations", "fo_iterations"):
        if getattr(config, key) < 0:
            raise ConfigError(f"Config key {key!r} must be >= 0, got {getattr(config, key)}.")
    if config.cg_steps < 1 or config.imaml_lambda <= 0:
        raise ConfigError("imaml needs cg_steps >= 1 and imaml_lambda > 0.")
    if config.imaml_max_grad_norm is not None and config.imaml_max_grad_norm <= 0:
        raise ConfigError("imaml_max_grad_norm must be > 0 (or null for no clipping).")
    if not 0 <= config.min_meta_lr <= config.meta_lr:
        raise ConfigError("min_meta_lr must lie between 0 and meta_lr.")
    if config.algorithm in ("mamlpp", "reptile", "imaml") and config.inner_steps < 1:
        raise ConfigError(f"algorithm {config.algorithm} needs inner_steps >= 1.")
    if config.algorithm == "metasgd" and config.inner_lr == 0:
        raise ConfigError("metasgd learns its inner rates from inner_lr; it must be > 0.")


def save(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def load(path: Path) -> Config:
    return from_dict(yaml.safe_load(path.read_text()) or {})


RL_TASKS = ("nav2d", "cheetah-vel", "cheetah-dir")


def _check_rl(config: Config) -> None:
    """The reinforcement-learning keys: known policy and outer step, sensible TRPO/PPO values."""
    for key, allowed in {"policy_activation": ("relu", "tanh"),
                         "outer": ("trpo", "ppo", "adam")}.items():
        if getattr(config, key) not in allowed:
            raise ConfigError(f"Config key {key!r} must be one of {', '.join(allowed)}, "
                              f"got {getattr(config, key)!r}.")
    for key in ("trajectories", "cg_iters", "ppo_epochs", "demonstrations"):
        if getattr(config, key) < 1:
            raise ConfigError(f"Config key {key!r} must be positive, got {getattr(config, key)}.")
    if config.horizon is not None and config.horizon < 1:
        raise ConfigError(f"Config key 'horizon' must be positive or null, got {config.horizon}.")
    if not 0 < config.cg_subsample <= 1:
        raise ConfigError(f"cg_subsample must lie in (0, 1], got {config.cg_subsample}.")
    for key in ("init_std", "min_std", "max_kl", "ppo_clip"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"Config key {key!r} must be > 0, got {getattr(config, key)}.")
    if not (0 < config.discount <= 1 and 0 <= config.gae_lambda <= 1):
        raise ConfigError("discount must lie in (0, 1] and gae_lambda in [0, 1].")
    if config.min_std > config.init_std:
        raise ConfigError(f"min_std ({config.min_std}) must not exceed init_std "
                          f"({config.init_std}).")
    if config.imitation_tasks < 0 or config.imitation_weight < 0:
        raise ConfigError("imitation_tasks and imitation_weight must be >= 0.")
    if config.imitation_tasks and config.task != "nav2d":
        raise ConfigError("imitation_tasks (mixed meta-batches) are available for task nav2d.")
    if config.imitation_tasks and config.outer == "trpo":
        raise ConfigError("Mixed meta-batches (imitation_tasks > 0) need outer=adam or ppo: "
                          "TRPO's trust region is defined for the RL tasks only.")
