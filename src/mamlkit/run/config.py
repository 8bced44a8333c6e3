"""Run configuration: one flat dataclass whose keys are grouped into sections, presets from YAML,
``key=value`` overrides with checks, and a run's sectioned ``config.yaml`` of the keys that apply.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad preset name, config key or value; the message says what to change."""


RL_TASKS = ("nav2d", "cheetah-vel", "cheetah-dir")
TASKS = ("sinusoid", "omniglot", *RL_TASKS)
ALGORITHMS = ("maml", "metasgd", "anil", "mamlpp", "reptile", "imaml")
BATCHINGS = ("auto", "vmap", "loop", "stacked")  # what the learners accept (MAML.__init__)
# The order of the groups in config.yaml and in 'mamlkit presets --show'.
SECTIONS = ("run", "task", "model", "inner", "outer", "family", "scale", "rl")
_DATASET_TASKS = ("omniglot",)  # tasks read from files: ways, data_root, protocol, download


def _key(section: str, default: Any, doc: str, choices: tuple[str, ...] = ()) -> Any:
    """A field whose metadata holds its section, one-line doc and allowed values: one schema."""
    metadata = {"section": section, "doc": doc, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    """Everything a run needs; the resolved copy is saved as the run's ``config.yaml``.

    Attributes stay flat (``config.inner_lr``) for the code that reads them; the sections and
    docs live in each field's metadata, so grouping and explaining keys needs no second list.
    """

    description: str = _key("run", "", "one line about the run, listed by 'mamlkit presets'")
    task: str = _key("task", "sinusoid", "sinusoid | omniglot (supervised) | nav2d | cheetah-vel "
                     "| cheetah-dir (meta-RL)", TASKS)
    model: str = _key("model", "mlp", "network of supervised tasks: mlp | conv4", ("mlp", "conv4"))
    hidden: list[int] = _key("model", [40, 40], "mlp: hidden layer widths; conv4: [filters per "
                             "layer]")
    ways: int = _key("task", 5, "classes per task (N-way)")
    shots: int = _key("task", 10, "support examples per task, per class for classification (K)")
    query_shots: int | None = _key("task", None, "query examples per task (per class); null: "
                                   "as shots")
    data_root: str | None = _key("task", None, "folder with the dataset's files (omniglot: the "
                                 "two zips)")
    protocol: str = _key("task", "finn", "omniglot split: finn (1200/423 characters) | lake "
                         "(alphabets)", ("finn", "lake"))
    download: bool = _key("task", False, "fetch missing dataset files from their official source")
    inner_lr: float = _key("inner", 0.01, "inner-loop step size alpha (0: the pretrained "
                           "baseline)")
    inner_steps: int = _key("inner", 1, "inner-loop gradient steps during meta-training")
    first_order: bool = _key("inner", False, "drop the second derivatives through the inner loop")
    meta_lr: float = _key("outer", 0.001, "Adam step size beta of the outer loop")
    meta_batch_size: int = _key("outer", 25, "tasks per meta-batch (outer step)")
    iterations: int = _key("run", 70000, "meta-training iterations (outer steps)")
    seed: int = _key("run", 0, "seed of the initial weights and of the sampled training tasks")
    batching: str = _key("scale", "auto", "how a meta-batch's tasks run: auto | vmap | loop | "
                         "stacked", BATCHINGS)
    chunk_size: int | None = _key("scale", None, "tasks per vectorised chunk (less memory); "
                                  "null: all at once")
    threads: int = _key("run", 1, "torch CPU threads (small models slow down with more)")
    device: str = _key("run", "auto", "auto | cpu | cuda (supervised runs; meta-RL runs on the "
                       "CPU)", ("auto", "cpu", "cuda"))
    eval_inner_lr: float | None = _key("run", None, "fine-tuning step size at evaluation (null: "
                                       "inner_lr, or the preset's for alpha=0 runs)")
    eval_steps: list[int] = _key("run", [0, 1, 2, 5, 10], "inner steps at which evaluation "
                                 "reports the adapted metric")
    eval_tasks: int = _key("run", 600, "held-out tasks of 'mamlkit eval'")
    log_every: int = _key("run", 100, "iterations between records in metrics.jsonl")
    val_every: int = _key("run", 1000, "iterations between validations on held-out tasks")
    val_tasks: int = _key("run", 100, "held-out tasks of each validation")
    checkpoint_every: int = _key("run", 1000, "iterations between checkpoints (exact resume)")
    time_limit: float | None = _key("run", None, "minutes; stop (with a checkpoint) once "
                                    "exceeded; null: no limit")
    algorithm: str = _key("family", "maml", "maml | metasgd | anil | mamlpp | reptile | imaml",
                          ALGORITHMS)
    adapt: list[str] | None = _key("inner", None, "glob patterns of inner-loop parameters; null: "
                                   "all (anil: last layer)")
    msl: bool = _key("family", True, "mamlpp: multi-step loss with annealed weights")
    msl_iterations: int = _key("family", 1000, "mamlpp: iterations until the MSL weights sit on "
                               "the last step")
    lslr: bool = _key("family", True, "mamlpp: learned per-layer per-step inner learning rates")
    bnwb: bool = _key("family", True, "mamlpp: per-step batch-norm weights and biases")
    fo_iterations: int = _key("family", 0, "mamlpp: first-order for the first N iterations, then "
                              "second order")
    cosine_meta_lr: bool = _key("outer", False, "cosine annealing of meta_lr to min_meta_lr")
    min_meta_lr: float = _key("outer", 0.0, "meta_lr at the end of the cosine schedule")
    reptile_data: str = _key("family", "all", "reptile: adapt on all examples (all) or the "
                             "support set only", ("all", "support"))
    imaml_lambda: float = _key("family", 1.0, "imaml: proximal strength lambda")
    cg_steps: int = _key("family", 5, "imaml: conjugate-gradient steps")
    imaml_max_grad_norm: float | None = _key("family", None, "imaml: clip each inner step's "
                                             "gradient norm; null: no clipping")
    checkpoint_inner: bool = _key("scale", False, "recompute inner steps in the backward pass "
                                  "(less memory)")
    compile: bool = _key("scale", False, "torch.compile the meta-step; falls back to eager where "
                         "unsupported")
    trajectories: int = _key("rl", 20, "trajectories per task, for the support and the query "
                             "set each")
    horizon: int | None = _key("rl", None, "steps per episode; null: the environment's")
    policy_hidden: list[int] = _key("rl", [100, 100], "hidden layer widths of the Gaussian MLP "
                                    "policy")
    policy_activation: str = _key("rl", "relu", "relu (paper, 100-100) | tanh (64-64 "
                                  "reimplementation)", ("relu", "tanh"))
    init_std: float = _key("rl", 1.0, "initial standard deviation of the Gaussian policy")
    min_std: float = _key("rl", 1e-6, "floor on the policy's standard deviation (see README)")
    outer: str = _key("rl", "trpo", "outer step: trpo (paper) | ppo (clip) | adam (meta_lr)",
                      ("trpo", "ppo", "adam"))
    max_kl: float = _key("rl", 0.01, "TRPO trust region on the adapted policies' KL")
    cg_iters: int = _key("rl", 10, "TRPO conjugate-gradient iterations")
    cg_damping: float = _key("rl", 1e-5, "TRPO damping of the KL Hessian-vector products")
    cg_subsample: float = _key("rl", 1.0, "fraction of the meta-batch's tasks in TRPO's KL "
                               "Hessian")
    ppo_clip: float = _key("rl", 0.2, "PPO ratio clip epsilon")
    ppo_epochs: int = _key("rl", 5, "PPO optimisation epochs per meta-batch (Adam, meta_lr)")
    discount: float = _key("rl", 0.99, "reward discount gamma")
    gae_lambda: float = _key("rl", 1.0, "GAE lambda (1: discounted return minus the linear "
                             "baseline)")
    imitation_tasks: int = _key("rl", 0, "supervised imitation tasks (H=1) added to each "
                                "meta-batch")
    imitation_weight: float = _key("rl", 1.0, "weight of the imitation meta-loss in the sum")
    demonstrations: int = _key("rl", 20, "(state, expert action) pairs per imitation "
                               "support/query set")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def key_sections() -> dict[str, str]:
    """Every key's section, in field order."""
    return {f.name: f.metadata["section"] for f in dataclasses.fields(Config)}


def key_docs() -> dict[str, str]:
    """Every key's one-line doc, in field order."""
    return {f.name: f.metadata["doc"] for f in dataclasses.fields(Config)}


def _rl(config: Config) -> bool:
    return config.task in RL_TASKS


def _supervised(config: Config) -> bool:
    return config.task not in RL_TASKS


def _algorithm(*names: str) -> Callable[[Config], bool]:
    return lambda config: config.algorithm in names


def _outer_step(name: str) -> Callable[[Config], bool]:
    return lambda config: config.outer == name


# A key applies when its section's rule and its own rule (each True when absent) both hold.
_SECTION_RULES: dict[str, Callable[[Config], bool]] = {"model": _supervised, "rl": _rl}
_KEY_RULES: dict[str, Callable[[Config], bool]] = {
    "device": _supervised,
    **dict.fromkeys(("shots", "query_shots"), _supervised),
    **dict.fromkeys(("ways", "data_root", "protocol", "download"),
                    lambda config: config.task in _DATASET_TASKS),
    "first_order": lambda config: _rl(config) or config.algorithm not in ("reptile", "imaml"),
    "adapt": lambda config: config.algorithm != "imaml",
    "meta_lr": lambda config: _supervised(config) or config.outer != "trpo",
    "cosine_meta_lr": lambda config: _supervised(config) or config.outer != "trpo",
    "min_meta_lr": lambda config: config.cosine_meta_lr and (_supervised(config)
                                                             or config.outer != "trpo"),
    **dict.fromkeys(("checkpoint_inner", "compile"), _supervised),
    **dict.fromkeys(("msl", "msl_iterations", "lslr", "bnwb", "fo_iterations"),
                    _algorithm("mamlpp")),
    "reptile_data": _algorithm("reptile"),
    **dict.fromkeys(("imaml_lambda", "cg_steps", "imaml_max_grad_norm"), _algorithm("imaml")),
    **dict.fromkeys(("max_kl", "cg_iters", "cg_damping", "cg_subsample"), _outer_step("trpo")),
    **dict.fromkeys(("ppo_clip", "ppo_epochs"), _outer_step("ppo")),
    "imitation_tasks": lambda config: config.task == "nav2d",
    **dict.fromkeys(("imitation_weight", "demonstrations"),
                    lambda config: config.task == "nav2d" and config.imitation_tasks > 0),
}


def applicable_keys(config: Config) -> list[str]:
    """The keys this run reads, in field order; the others cannot change it.

    The rules follow what the code reads, so a key left out of ``config.yaml`` could not have
    changed the run (``save`` still keeps the ``unused_keys``, for an exact round trip):

    - ``rl`` only for RL_TASKS; ``model`` and the keys ``device``, ``shots``, ``query_shots``,
      ``checkpoint_inner``, ``compile`` only for the supervised tasks (meta-RL trains its own
      policy, on the CPU); ``cosine_meta_lr`` wherever ``meta_lr`` applies, ``min_meta_lr``
      only with ``cosine_meta_lr``. The family and ``batching``/``chunk_size`` apply to both.
    - ``ways``, ``data_root``, ``protocol``, ``download`` only for tasks read from files
      (omniglot), not for sinusoid.
    - Family keys only for their algorithm: msl, msl_iterations, lslr, bnwb, fo_iterations for
      mamlpp; reptile_data for reptile; imaml_lambda, cg_steps, imaml_max_grad_norm for imaml.
      ``adapt`` for every algorithm but imaml; ``first_order`` for all but reptile and imaml
      (always first order / implicit).
    - RL: ``max_kl`` and ``cg_*`` only with outer=trpo, ``ppo_*`` only with outer=ppo,
      ``meta_lr`` not with outer=trpo; ``imitation_tasks`` only for nav2d, its weight and
      ``demonstrations`` only when it is > 0.
    - Everything else (run keys, ``task``, ``inner_lr``, ``inner_steps``, ``meta_batch_size``)
      applies to every run.
    """
    keys = []
    for name, section in key_sections().items():
        section_rule = _SECTION_RULES.get(section)
        key_rule = _KEY_RULES.get(name)
        if (section_rule is None or section_rule(config)) and (key_rule is None
                                                                or key_rule(config)):
            keys.append(name)
    return keys


def applicable_sections(config: Config) -> list[str]:
    """The sections with at least one key that applies (see ``applicable_keys``), in order."""
    sections = key_sections()
    present = {sections[name] for name in applicable_keys(config)}
    return [section for section in SECTIONS if section in present]


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
    """Refuse values no run can use, with one sentence that names the key and what it needs."""
    positive = ["inner_steps", "meta_batch_size", "iterations", "shots", "ways", "eval_tasks",
                "log_every", "val_every", "checkpoint_every", "threads", "val_tasks"]
    for key in positive:
        if getattr(config, key) < (0 if key == "inner_steps" else 1):
            raise ConfigError(f"Config key {key!r} must be positive, got {getattr(config, key)}.")
    if config.inner_lr < 0 or config.meta_lr <= 0:
        raise ConfigError("inner_lr must be >= 0 and meta_lr > 0.")
    _check_choices(config)
    _check_family(config)
    _check_scale(config)
    _check_rl(config)


def _check_choices(config: Config) -> None:
    """Keys with a fixed set of values (the ``choices`` in their metadata)."""
    for f in dataclasses.fields(Config):
        allowed = f.metadata["choices"]
        if allowed and getattr(config, f.name) not in allowed:
            raise ConfigError(f"Config key {f.name!r} must be one of {', '.join(allowed)}, "
                              f"got {getattr(config, f.name)!r}.")


def _check_scale(config: Config) -> None:
    """The scale keys: chunks of tasks must hold at least one task."""
    if config.chunk_size is not None and config.chunk_size < 1:
        raise ConfigError(f"Config key 'chunk_size' must be positive or null, got "
                          f"{config.chunk_size}.")


def _check_family(config: Config) -> None:
    """The algorithm-family keys: sensible annealing and solver settings."""
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


def _check_rl(config: Config) -> None:
    """The reinforcement-learning keys: sensible sampling, policy and TRPO/PPO values."""
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
    if _rl(config) and config.algorithm in ("reptile", "imaml"):
        raise ConfigError(f"algorithm {config.algorithm} has no meta-RL form here; choose maml, "
                          "metasgd, anil or mamlpp for an RL task.")
    if config.imitation_tasks and config.outer == "trpo":
        raise ConfigError("Mixed meta-batches (imitation_tasks > 0) need outer=adam or ppo: "
                          "TRPO's trust region is defined for the RL tasks only.")


def _yaml_line(key: str, value: Any) -> str:
    """``key: value`` on one line (flow-style lists, no wrapping); JSON, which YAML reads, for
    values YAML would spread over several lines."""
    flow = None if isinstance(value, list) else False  # None: only the list in flow style
    text = yaml.safe_dump({key: value}, default_flow_style=flow, width=math.inf,
                          sort_keys=False).rstrip("\n")
    return text if "\n" not in text else f"{key}: {json.dumps(value)}"


def _group(heading: str, keys: list[str], values: dict[str, Any], docs: bool) -> list[str]:
    """One ``# --- heading ---`` line and its keys' lines, docs aligned as trailing comments."""
    notes = key_docs()
    texts = [(key, _yaml_line(key, values[key])) for key in keys]
    width = max((len(text) for _, text in texts if len(text) <= 40), default=0)
    return [f"# --- {heading} ---",
            *(f"{text.ljust(width)}  # {notes[key]}" if docs else text for key, text in texts)]


def unused_keys(config: Config) -> list[str]:
    """Keys that do not apply yet differ from their defaults (say a TRPO key inherited by an
    adam preset, or a key set by hand): the run ignores them, but dropping them from
    ``config.yaml`` would load back a different Config."""
    applicable, default = set(applicable_keys(config)), Config()
    return [f.name for f in dataclasses.fields(Config) if f.name not in applicable
            and getattr(config, f.name) != getattr(default, f.name)]


def format_sections(config: Config, docs: bool = False, unused: bool = False) -> str:
    """The keys that apply, grouped under ``# --- section ---`` lines, as YAML text.

    Each key stays a flat ``key: value`` line, so ``load``, ``--set key=value`` and tools that
    read or edit single lines keep working; ``docs`` adds each key's doc as a trailing comment;
    ``unused`` adds the ``unused_keys`` in a last group, so the text loads back as ``config``.
    """
    sections, values = key_sections(), config.to_dict()
    keys = applicable_keys(config)
    lines: list[str] = []
    for section in SECTIONS:
        group = [key for key in keys if sections[key] == section]
        if group:
            lines += _group(section, group, values, docs)
    leftovers = unused_keys(config) if unused else []
    if leftovers:
        lines += _group(UNUSED, leftovers, values, docs)
    return "\n".join(lines) + "\n"


# The heading of the keys a run does not read but which differ from their defaults.
UNUSED = "unused: set, but this run does not read them"
_HEADER = ("# mamlkit run config: the keys that apply to this run, by section; "
           "left-out keys keep their defaults\n")


def save(config: Config, path: Path) -> None:
    """Write ``config.yaml``: the keys that apply, so a run's file shows what shaped it, and
    the ``unused_keys`` last, so that ``load`` gives back ``config`` field for field."""
    path.write_text(_HEADER + format_sections(config, unused=True))


def load(path: Path) -> Config:
    """A run's config from a sectioned ``config.yaml`` or an old flat one with every key.

    Keys left out (they do not apply) take their defaults; keys present, applicable or not,
    are taken as written, so old files give back the config they were saved from.
    """
    return from_dict(yaml.safe_load(path.read_text()) or {})
