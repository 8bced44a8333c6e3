"""Run configuration: one flat dataclass whose keys are grouped into sections, presets and config
files from YAML, ``key=value`` overrides with checks, and a run's sectioned ``config.yaml`` of the
keys that apply.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mamlkit.registry import ConfigError, TaskSpec
from mamlkit.run import components
from mamlkit.run.atomic import write_atomic

BATCHINGS = ("auto", "vmap", "loop", "stacked")  # what the learners accept (MAML.__init__)
# The order of the groups in config.yaml and in 'mamlkit presets --show'.
SECTIONS = ("run", "task", "model", "inner", "outer", "family", "scale", "rl")
SEED_MAX = 2**63 - 1  # torch.manual_seed takes this; the task stream seeds with seed + 1
CONFIG_SUFFIXES = (".yaml", ".yml")


# --- loggers: where a run's records go (run/loggers.py writes them) ---
# Each logger and the package it needs, which is also the name of the pip extra that brings it;
# jsonl (metrics.jsonl) needs none and is mandatory: resume, eval and plot read it.
LOGGER_PACKAGES: dict[str, str | None] = {"jsonl": None, "tensorboard": "tensorboard",
                                          "wandb": "wandb"}


def installed(package: str) -> bool:
    """Whether ``import package`` would find it, without importing it (a name set to None in
    ``sys.modules``, as a test does to play a missing package, counts as missing)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def default_loggers() -> list[str]:
    """metrics.jsonl, and TensorBoard where it is installed: a lean install trains without it
    and without a warning; a run's config.yaml names what it wrote."""
    return ["jsonl", "tensorboard"] if installed("tensorboard") else ["jsonl"]


@dataclass(frozen=True)
class Bounds:
    """The values a numeric key (or each entry of a list key) may take; floats must be finite.

    Declared next to the key, so every key carries its range and ``check`` needs no second list.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def text(self) -> str:
        """``> 0``, ``>= 1``, ``> 0 and <= 1``: the range as a user reads it."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high}")
        return " and ".join(parts)


_AT_LEAST_0, _AT_LEAST_1 = Bounds(0), Bounds(1)
_ABOVE_0 = Bounds(0, low_open=True)
_FRACTION = Bounds(0, 1, low_open=True)  # (0, 1]
_UNIT = Bounds(0, 1)  # [0, 1]


def _key(section: str, default: Any, doc: str, choices: tuple[str, ...] = (),
         bounds: Bounds | None = None, nonempty: bool = False) -> Any:
    """A field whose metadata holds its section, one-line doc, allowed values (``choices`` or
    numeric ``bounds``, per entry for lists) and whether a list may be empty: one schema."""
    metadata = {"section": section, "doc": doc, "choices": choices, "bounds": bounds,
                "nonempty": nonempty}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    """Everything a run needs; the resolved copy is saved as the run's ``config.yaml``.

    Attributes stay flat (``config.inner_lr``) for the code that reads them; the sections, docs
    and ranges live in each field's metadata, so grouping, explaining and checking keys needs no
    second list.
    """

    description: str = _key("run", "", "one line about the run, listed by 'mamlkit presets'")
    # A file that names no task or algorithm trains MAML on sinusoids, as it always has.
    task: str = _key("task", "sinusoid", "the task distribution (supervised) or environment "
                     "(meta-RL)")
    model: str = _key("model", "mlp", "network of supervised tasks: mlp | conv4 | resnet12",
                      ("mlp", "conv4", "resnet12"))
    hidden: list[int] = _key("model", [40, 40], "mlp: hidden layer widths; conv4: [filters per "
                             "layer]", bounds=_AT_LEAST_1)
    ways: int = _key("task", 5, "classes per task (N-way)", bounds=_AT_LEAST_1)
    shots: int = _key("task", 10, "support examples per task, per class for classification (K)",
                      bounds=_AT_LEAST_1)
    query_shots: int | None = _key("task", None, "query examples per task (per class); null: "
                                   "as shots", bounds=_AT_LEAST_1)
    data_root: str | None = _key("task", None, "the dataset: omniglot: a folder with the two "
                                 "zips; folder: a folder (or .zip) of class sub-folders")
    protocol: str = _key("task", "finn", "omniglot split: finn (1200/423 characters) | lake "
                         "(alphabets)", ("finn", "lake"))
    download: bool = _key("task", False, "fetch missing dataset files from their official source")
    image_size: int | None = _key("task", None, "folder: resize images to this side in pixels "
                                  "(null: keep their size; they must be square)",
                                  bounds=_AT_LEAST_1)
    channels: int = _key("task", 3, "folder: 1 (grayscale) or 3 (RGB)", bounds=Bounds(1, 3))
    invert: bool = _key("task", False, "folder: map v to 255 - v (dark strokes become bright)")
    class_split: list[float] = _key("task", [0.64, 0.16, 0.2], "folder: fractions of the classes "
                                    "for train, val, test (a fixed permutation)",
                                    bounds=_UNIT, nonempty=True)
    class_split_file: str | None = _key("task", None, "folder: a YAML file {train: [...], val: "
                                        "[...], test: [...]} of class names; wins over "
                                        "class_split")
    inner_lr: float = _key("inner", 0.01, "inner-loop step size alpha (0: the pretrained "
                           "baseline)", bounds=_AT_LEAST_0)
    inner_steps: int = _key("inner", 1, "inner-loop gradient steps during meta-training",
                            bounds=_AT_LEAST_0)
    first_order: bool = _key("inner", False, "drop the second derivatives through the inner loop")
    meta_lr: float = _key("outer", 0.001, "Adam step size beta of the outer loop",
                          bounds=_ABOVE_0)
    meta_batch_size: int = _key("outer", 25, "tasks per meta-batch (outer step)",
                                bounds=_AT_LEAST_1)
    iterations: int = _key("run", 70000, "meta-training iterations (outer steps)",
                           bounds=_AT_LEAST_1)
    seed: int = _key("run", 0, "seed of the initial weights and of the sampled training tasks",
                     bounds=Bounds(0, SEED_MAX))
    batching: str = _key("scale", "auto", "how a meta-batch's tasks run: auto | vmap | loop | "
                         "stacked", BATCHINGS)
    chunk_size: int | None = _key("scale", None, "tasks per vectorised chunk (less memory); "
                                  "null: all at once", bounds=_AT_LEAST_1)
    threads: int = _key("run", 1, "CPU threads: torch's, and the MuJoCo tasks' simulator steps "
                        "(small models slow down with more)",
                        bounds=_AT_LEAST_1)
    device: str = _key("run", "auto", "auto | cpu | cuda (supervised runs; meta-RL runs on the "
                       "CPU)", ("auto", "cpu", "cuda"))
    eval_inner_lr: float | list[float] | None = _key(
        "run", None, "evaluation's step size, or one per step (last repeats); null: "
        "inner_lr (alpha=0: the preset's)", bounds=_AT_LEAST_0, nonempty=True)
    eval_steps: list[int] = _key("run", [0, 1, 2, 5, 10], "inner steps at which evaluation "
                                 "reports the adapted metric", bounds=_AT_LEAST_0, nonempty=True)
    eval_tasks: int = _key("run", 600, "held-out tasks of 'mamlkit eval'", bounds=_AT_LEAST_1)
    log_every: int = _key("run", 100, "iterations between records in metrics.jsonl",
                          bounds=_AT_LEAST_1)
    val_every: int = _key("run", 1000, "iterations between validations on held-out tasks",
                          bounds=_AT_LEAST_1)
    val_tasks: int = _key("run", 100, "held-out tasks of each validation", bounds=_AT_LEAST_1)
    checkpoint_every: int = _key("run", 1000, "iterations between checkpoints (exact resume)",
                                 bounds=_AT_LEAST_1)
    time_limit: float | None = _key("run", None, "minutes; stop (with a checkpoint) once "
                                    "exceeded; null: no limit", bounds=_ABOVE_0)
    loggers: list[str] = _key("run", default_loggers(), "where records go: jsonl (always) | "
                              "tensorboard | wandb; default: jsonl, tensorboard if installed",
                              nonempty=True)
    algorithm: str = _key("family", "maml", "the learner: MAML or one of its family")
    adapt: list[str] | None = _key("inner", None, "glob patterns of inner-loop parameters; null: "
                                   "all (anil: last layer)", nonempty=True)
    msl: bool = _key("family", True, "mamlpp: multi-step loss with annealed weights")
    msl_iterations: int = _key("family", 1000, "mamlpp: iterations until the MSL weights sit on "
                               "the last step", bounds=_AT_LEAST_0)
    lslr: bool = _key("family", True, "mamlpp: learned per-layer per-step inner learning rates")
    bnwb: bool = _key("family", True, "mamlpp: per-step batch-norm weights and biases")
    fo_iterations: int = _key("family", 0, "mamlpp: first-order for the first N iterations, then "
                              "second order", bounds=_AT_LEAST_0)
    cosine_meta_lr: bool = _key("outer", False, "cosine annealing of meta_lr to min_meta_lr")
    min_meta_lr: float = _key("outer", 0.0, "meta_lr at the end of the cosine schedule",
                              bounds=_AT_LEAST_0)
    reptile_data: str = _key("family", "all", "reptile: adapt on all examples (all) or the "
                             "support set only", ("all", "support"))
    imaml_lambda: float = _key("family", 1.0, "imaml: proximal strength lambda", bounds=_ABOVE_0)
    imaml_cg_steps: int = _key("family", 5, "imaml: conjugate-gradient steps of the implicit "
                               "meta-gradient", bounds=_AT_LEAST_1)
    head_steps: int = _key("family", 100, "pretrained: L-BFGS iterations of the linear head fit "
                           "at evaluation", bounds=_AT_LEAST_1)
    head_weight_decay: float = _key("family", 1e-3, "pretrained: L2 penalty of the linear head "
                                    "fit (lambda/2 |W|^2)", bounds=_AT_LEAST_0)
    imaml_max_grad_norm: float | None = _key("family", None, "imaml: clip inner gradient norms "
                                             "(gd), step lengths at inner_lr times it (lbfgs)",
                                             bounds=_ABOVE_0)
    imaml_solver: str = _key("family", "lbfgs", "imaml: proximal inner solver: lbfgs (L-BFGS, "
                             "line search) | gd (steps of inner_lr)", ("lbfgs", "gd"))
    imaml_tol: float = _key("family", 1e-5, "imaml: inner solver stops at this proximal gradient "
                            "norm (0: never early)", bounds=_AT_LEAST_0)
    checkpoint_inner: bool = _key("scale", False, "recompute inner steps in the backward pass "
                                  "(less memory)")
    compile: bool = _key("scale", False, "torch.compile the meta-step; falls back to eager where "
                         "unsupported")
    trajectories: int = _key("rl", 20, "trajectories per task, for the support and the query "
                             "set each", bounds=_AT_LEAST_1)
    eval_trajectories: int | None = _key("rl", None, "trajectories per task and inner step at "
                                         "evaluation; null: trajectories", bounds=_AT_LEAST_1)
    horizon: int | None = _key("rl", None, "steps per episode; null: the environment's",
                               bounds=_AT_LEAST_1)
    action_scale: float = _key("rl", 1.0, "nav2d: step = policy action x this, clipped to "
                               "+-0.1 (0.1: the paper's code)",
                               bounds=_ABOVE_0)
    frame_skip: int | None = _key("rl", None, "MuJoCo locomotion: simulator steps per action; "
                                  "null: 5, gymnasium's; 1: the paper's code (rllab)",
                                  bounds=_AT_LEAST_1)
    policy_hidden: list[int] = _key("rl", [100, 100], "hidden layer widths of the Gaussian MLP "
                                    "policy", bounds=_AT_LEAST_1)
    policy_activation: str = _key("rl", "relu", "relu (paper, 100-100) | tanh (64-64 "
                                  "reimplementation)", ("relu", "tanh"))
    init_std: float = _key("rl", 1.0, "initial standard deviation of the Gaussian policy",
                           bounds=_ABOVE_0)
    min_std: float = _key("rl", 1e-6, "floor on the policy's standard deviation (see README)",
                          bounds=_ABOVE_0)
    outer: str = _key("rl", "trpo", "outer step: trpo (paper) | ppo (clip) | adam (meta_lr)",
                      ("trpo", "ppo", "adam"))
    max_kl: float = _key("rl", 0.01, "TRPO trust region on the adapted policies' KL",
                         bounds=_ABOVE_0)
    cg_iters: int = _key("rl", 10, "TRPO conjugate-gradient iterations", bounds=_AT_LEAST_1)
    cg_damping: float = _key("rl", 1e-5, "TRPO damping of the KL Hessian-vector products",
                             bounds=_AT_LEAST_0)
    cg_subsample: float = _key("rl", 1.0, "fraction of the meta-batch's tasks in TRPO's KL "
                               "Hessian", bounds=_FRACTION)
    fisher_product: str = _key("rl", "gauss_newton", "TRPO's KL Hessian products: gauss_newton "
                               "(J^T M J, fewer FLOPs) | hessian; the same matrix",
                               ("gauss_newton", "hessian"))
    ppo_clip: float = _key("rl", 0.2, "PPO ratio clip epsilon",
                           bounds=Bounds(0, 1, low_open=True, high_open=True))
    ppo_epochs: int = _key("rl", 5, "PPO optimisation epochs per meta-batch (Adam, meta_lr)",
                           bounds=_AT_LEAST_1)
    estimator: str = _key("rl", "maml", "meta-gradient estimator: maml (paper) | dice | lvc "
                          "(ProMP) add the pre-update sampling term", ("maml", "dice", "lvc"))
    discount: float = _key("rl", 0.99, "reward discount gamma", bounds=_FRACTION)
    gae_lambda: float = _key("rl", 1.0, "GAE lambda (1: discounted return minus the linear "
                             "baseline)", bounds=_UNIT)
    baseline_fit: str = _key("rl", "in_sample", "linear baseline fit on its own episodes "
                             "(in_sample, rllab) or each half on the other (cross)",
                             ("in_sample", "cross"))
    imitation_tasks: int = _key("rl", 0, "supervised imitation tasks (H=1) added to each "
                                "meta-batch", bounds=_AT_LEAST_0)
    imitation_weight: float = _key("rl", 1.0, "weight of the imitation meta-loss in the sum",
                                   bounds=_AT_LEAST_0)
    demonstrations: int = _key("rl", 20, "(state, expert action) pairs per imitation "
                               "support/query set", bounds=_AT_LEAST_1)
    sampler_workers: int = _key("rl", 1, "processes that sample episodes per torchrun rank (0 or "
                                "1: this one; k: k - 1 spawned workers)",
                                bounds=Bounds(0, 256))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def key_sections() -> dict[str, str]:
    """Every key's section, in field order."""
    return {f.name: f.metadata["section"] for f in dataclasses.fields(Config)}


def key_docs() -> dict[str, str]:
    """Every key's one-line doc, in field order; ``task`` and ``algorithm`` list the names
    registered (``mamlkit.registry``)."""
    docs = {f.name: f.metadata["doc"] for f in dataclasses.fields(Config)}
    docs["task"] += ": " + " | ".join(components.tasks())
    docs["algorithm"] += ": " + " | ".join(components.learners())
    return docs


def _supervised(config: Config) -> bool:
    return not components.is_rl(config)


def _trains_model(config: Config) -> bool:
    """A supervised task whose model the config's ``model`` keys describe."""
    task = components.task(config.task)
    return isinstance(task, TaskSpec) and bool(task.models)


def _meta_steps(config: Config) -> bool:
    """A supervised run whose learner meta-trains through an inner loop (not pretraining)."""
    return _supervised(config) and not components.learner(config.algorithm).pretrains


def _outer_step(name: str) -> Callable[[Config], bool]:
    return lambda config: config.outer == name


class Rule(typing.NamedTuple):
    """When a key applies, and to whom in words (``RL tasks with outer=trpo``), so that the
    refusal of a key set where it does not apply names where it belongs from the same rule.
    ``who`` may be a function: words that list registered components."""

    holds: Callable[[Config], bool]
    who: str | Callable[[], str]

    def __call__(self, config: Config) -> bool:
        return self.holds(config)

    def text(self) -> str:
        return self.who if isinstance(self.who, str) else self.who()


def _rl_who() -> str:
    envs = [spec for spec in components.tasks().values() if spec.rl]
    return f"the RL {components.names_text(envs)}"


def _model_who() -> str:
    tasks = [spec for spec in components.tasks().values()
             if isinstance(spec, TaskSpec) and spec.models]
    return f"{components.names_text(tasks)} (other tasks bring their own model)"


def _meta_step_who() -> str:
    pretraining = [spec.name for spec in components.learners().values() if spec.pretrains]
    return f"supervised tasks with an algorithm other than {' and '.join(pretraining)}"


_NOT_TRPO = "supervised tasks and RL tasks with outer=adam or ppo (TRPO steps by max_kl)"


def _meta_lr_applies(config: Config) -> bool:
    return _supervised(config) or config.outer != "trpo"


# A key applies when its section's rule and its own rule (each True when absent) both hold and,
# for a key that components claim (``Spec.keys``: the family's and the tasks' own keys), when the
# run's task or learner claims it. The rules below depend on properties of the run (RL or not,
# the outer step), never on a component's name.
_SECTION_RULES: dict[str, Rule] = {
    "model": Rule(_trains_model, _model_who),
    "rl": Rule(components.is_rl, _rl_who)}
_KEY_RULES: dict[str, Rule] = {
    "device": Rule(_supervised, "supervised tasks (meta-RL runs on the CPU)"),
    **dict.fromkeys(("shots", "query_shots"),
                    Rule(_supervised, "supervised tasks (RL tasks sample trajectories)")),
    **dict.fromkeys(("meta_lr", "cosine_meta_lr"), Rule(_meta_lr_applies, _NOT_TRPO)),
    "min_meta_lr": Rule(lambda config: config.cosine_meta_lr and _meta_lr_applies(config),
                        "cosine_meta_lr=true"),
    **dict.fromkeys(("checkpoint_inner", "compile"), Rule(_meta_steps, _meta_step_who)),
    **dict.fromkeys(("max_kl", "cg_iters", "cg_damping", "cg_subsample", "fisher_product"),
                    Rule(_outer_step("trpo"), "RL tasks with outer=trpo")),
    **dict.fromkeys(("ppo_clip", "ppo_epochs"),
                    Rule(_outer_step("ppo"), "RL tasks with outer=ppo")),
    **dict.fromkeys(("imitation_weight", "demonstrations"),
                    Rule(lambda config: config.imitation_tasks > 0, "imitation_tasks > 0")),
}


def applicable_keys(config: Config) -> list[str]:
    """The keys this run reads, in field order; the others cannot change it.

    The rules follow what the code reads, so a key left out of ``config.yaml`` could not have
    changed the run (``save`` still keeps the ``unused_keys``, for an exact round trip):

    - A key that components claim (their ``keys`` in ``mamlkit.registry``: a learner's family
      keys, a task's dataset keys, an environment's options) only where the run's task or
      learner claims it.
    - ``rl`` only for RL tasks (environments); ``model`` only for the supervised tasks that
      train a model the config names; ``device``, ``shots``, ``query_shots`` only for
      supervised tasks (meta-RL trains its own policy, on the CPU); ``checkpoint_inner`` and
      ``compile`` only for supervised tasks with a learner that meta-trains through an inner
      loop; ``cosine_meta_lr`` wherever ``meta_lr`` applies, ``min_meta_lr`` only with
      ``cosine_meta_lr``. ``batching``/``chunk_size`` apply to both kinds.
    - RL: ``max_kl`` and ``cg_*`` only with outer=trpo, ``ppo_*`` only with outer=ppo,
      ``meta_lr`` not with outer=trpo; ``imitation_weight`` and ``demonstrations`` only where
      ``imitation_tasks`` is > 0.
    - Everything else (run keys, ``task``, ``inner_lr``, ``inner_steps``, ``meta_batch_size``)
      applies to every run.
    """
    claimed = {key for spec in components.chosen(config) for key in spec.keys}
    owned = components.owners()
    keys = []
    for name, section in key_sections().items():
        rules = (_SECTION_RULES.get(section), _KEY_RULES.get(name))
        if all(rule is None or rule(config) for rule in rules) and (name not in owned
                                                                     or name in claimed):
            keys.append(name)
    return keys


def applicable_sections(config: Config) -> list[str]:
    """The sections with at least one key that applies (see ``applicable_keys``), in order."""
    sections = key_sections()
    present = {sections[name] for name in applicable_keys(config)}
    return [section for section in SECTIONS if section in present]


def belongs_to(key: str) -> str:
    """Where ``key`` applies, in words (``algorithm mamlpp``); ``every run`` for most keys."""
    claimers = components.owners().get(key)
    key_rule = _KEY_RULES.get(key)
    if claimers:
        owners = components.names_text(claimers)
        return f"{owners} with {key_rule.text()}" if key_rule else owners
    rule = key_rule or _SECTION_RULES.get(key_sections()[key])
    return rule.text() if rule else "every run"


def set_but_unused(values: dict[str, Any], config: Config) -> list[str]:
    """The keys of ``values`` that ``config`` does not read and that hold other than their
    default: a key at its default (as every old flat ``config.yaml`` writes it) changes
    nothing, so it does not count as set."""
    applicable, default = set(applicable_keys(config)), Config()
    return [key for key in values if key not in applicable
            and getattr(config, key) != getattr(default, key)]


def _run_kind(config: Config) -> str:
    """``task nav2d, algorithm maml, outer trpo``: what decides which keys apply."""
    outer = f", outer {config.outer}" if components.is_rl(config) else ""
    return f"task {config.task}, algorithm {config.algorithm}{outer}"


def refuse_unused(values: dict[str, Any], config: Config) -> None:
    """ConfigError naming the keys of ``values`` that ``config`` would ignore and where each
    belongs: a key set where it does not apply is a mistake (a typo of the run, the wrong
    preset), never something to write into ``config.yaml`` silently."""
    keys = set_but_unused(values, config)
    if not keys:
        return
    named = [f"{key!r} (for {belongs_to(key)})" for key in keys]
    listed = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
    noun, verb, pronoun = ("key", "does", "it") if len(keys) == 1 else ("keys", "do", "them")
    raise ConfigError(f"Config {noun} {listed} {verb} not apply to this run of "
                      f"{_run_kind(config)}; remove {pronoun}.")


def _type_name(kind: Any) -> str:
    """``int``, ``list of int``, ``null``: a type as the messages name it."""
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) is list:
        return f"list of {_type_name(typing.get_args(kind)[0])}"
    return getattr(kind, "__name__", str(kind))


def _coerce_one(value: Any, option: Any) -> tuple[bool, Any]:
    """``(True, value as option)`` when ``value`` fits type ``option`` (int to float allowed)."""
    if option is type(None) or option is bool or option is str:
        return isinstance(value, option), value
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if option is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-6 (no dot) as a string
            return True, float(value)
        except ValueError:
            return False, value
    if option is float:
        fits = isinstance(value, int | float) and not isinstance(value, bool)
        return fits, float(value) if fits else value
    if typing.get_origin(option) is list and isinstance(value, list):
        items = [_coerce_one(v, typing.get_args(option)[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    return False, value


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` as type ``kind`` (int to float allowed, None for optional keys), else an error."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    for option in options:
        fits, coerced = _coerce_one(value, option)
        if fits:
            return coerced
    names = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"Config key {key!r} needs a value of type {names}, got {value!r}.")


def _unknown_key(key: Any, valid: list[str]) -> ConfigError:
    """The error for a key no Config has, with the closest valid key when one is close."""
    if not isinstance(key, str):
        return ConfigError(f"Config keys are names like inner_lr, got {key!r}.")
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"Unknown config key {key!r}; valid keys{hint} are: {', '.join(valid)}.")


# Old key names, still read (from config files, overrides and run directories of their day)
# and saved under the new name.
RENAMED_KEYS = {"cg_steps": "imaml_cg_steps"}  # iMAML's, apart from TRPO's cg_iters


def current_names(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the old names of ``RENAMED_KEYS`` under their new ones."""
    renamed = dict(values)
    for old, new in RENAMED_KEYS.items():
        if old in renamed:
            if new in renamed:
                raise ConfigError(f"Config keys {old!r} and {new!r} are the same key (the old "
                                  f"and the new name); set only {new!r}.")
            renamed[new] = renamed.pop(old)
    return renamed


def from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    """A Config from ``values`` over ``base``; unknown keys and wrong types raise ConfigError;
    old key names (``RENAMED_KEYS``) are read as their new ones."""
    values = current_names(values)
    kinds = field_types()
    unknown = [key for key in values if key not in kinds]
    if unknown:
        raise _unknown_key(unknown[0], sorted(kinds))
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


# The keys that name files a run reads: stored absolute, so a run's config.yaml names the same
# files from any working directory ('mamlkit eval' run elsewhere, a resume from another shell).
PATH_KEYS = ("data_root", "class_split_file")
# What kind of run a config describes: a resume's CONFIG must agree with the run on these.
# Not ``algorithm``: 'train nav2d --set algorithm=anil' is resumed as 'train nav2d --resume'.
KIND_KEYS = ("task",)


def absolute_path(value: Any) -> Any:
    """A path as typed (``~`` expanded) made absolute against the current directory, without
    resolving symbolic links (the user's name for a folder stays); other values as they are."""
    if not isinstance(value, str) or not value.strip():
        return value  # null, or a blank or mistyped value that ``check`` names
    return os.path.abspath(os.path.expanduser(value))


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (overrides) with the PATH_KEYS made absolute."""
    return {key: absolute_path(value) if key in PATH_KEYS else value
            for key, value in values.items()}


def with_absolute_paths(config: Config) -> Config:
    """``config`` with the PATH_KEYS made absolute (a config file may hold relative ones)."""
    return dataclasses.replace(config, **{key: absolute_path(getattr(config, key))
                                          for key in PATH_KEYS})


def kind_differences(named: Config, run: Config) -> list[str]:
    """``task nav2d``: the KIND_KEYS where ``named`` differs from ``run``."""
    return [f"{key} {getattr(named, key)}" for key in KIND_KEYS
            if getattr(named, key) != getattr(run, key)]


def preset_dir() -> Path:
    return Path(str(resources.files("mamlkit") / "configs"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def is_config_file(name: str, folder: Path | None = None) -> bool:
    """Whether ``name`` means a YAML config file rather than a preset: it ends in .yaml/.yml, or
    it is no preset's name but an existing file (relative names count from ``folder``)."""
    if name.endswith(CONFIG_SUFFIXES):
        return True
    return name not in preset_names() and (Path(folder or ".") / name).expanduser().is_file()


def _source(name: str, folder: Path | None) -> tuple[Path, str]:
    """The file behind a preset name or a config file path, and how messages call it."""
    if is_config_file(name, folder):
        path = (Path(folder or ".") / name).expanduser()
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist; pass a preset name (see "
                              f"'mamlkit presets') or the path of a YAML config file.")
        return path, f"config file '{path}'"
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        names = preset_names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? all: " if close else ""
        raise ConfigError(f"Unknown preset {name!r}; run 'mamlkit presets' to list them "
                          f"({hint}{', '.join(names)}).")
    return path, f"preset {name!r}"


def _read_yaml(path: Path, label: str) -> dict[str, Any]:
    """The ``key: value`` mapping of a YAML file, with one-sentence errors for broken files."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid syntax"
        raise ConfigError(f"The YAML of {label} does not parse{where} ({problem}); fix that "
                          "line.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read {label} ({error}).") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"The top level of {label} must be 'key: value' lines, got a "
                          f"{type(values).__name__}.")
    return current_names(values)


def _load(name: str, folder: Path | None, chain: tuple[tuple[Path, str], ...]) -> Config:
    """A preset's or config file's Config after its ``base:`` chain; a chain that comes back to
    a file it passed is refused (it would recurse forever)."""
    return _load_own(name, folder, chain)[0]


def _load_own(name: str, folder: Path | None,
              chain: tuple[tuple[Path, str], ...]) -> tuple[Config, dict[str, Any], str]:
    """``_load``'s Config, with the keys the file itself sets and how messages call it."""
    path, label = _source(name, folder)
    names = [seen for _, seen in chain] + [name]
    if path.resolve() in {seen for seen, _ in chain}:
        raise ConfigError(f"The base: lines go round in a circle ({' -> '.join(names)}); a "
                          "preset or config file cannot start from itself, so remove one.")
    values = _read_yaml(path, label)
    base = values.pop("base", None)
    own = _set_here(values, path) if base is None else values
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise ConfigError(f"The base: of {label} must name a preset or a YAML file, got "
                          f"{base!r}.")
    start = _load(base, path.parent, (*chain, (path.resolve(), name))) if base else None
    try:
        return from_dict(values, start), own, label
    except ConfigError as error:
        raise ConfigError(f"{str(error).rstrip('.')} (in {label}).") from None


def _set_here(values: dict[str, Any], path: Path) -> dict[str, Any]:
    """The keys a file sets, without what a run's saved ``config.yaml`` merely records: its
    ``unused`` group (keys inherited from a base, or from older runs) and every key of the old
    flat format; so a run's config.yaml trains again as a CONFIG file. A hand-written file
    sets a few keys; the flat format wrote every key of its day (over half of today's)."""
    text = path.read_text(encoding="utf-8")
    heading = f"# --- {UNUSED} ---"
    if "# --- " not in text and len(values) > len(field_types()) // 2:
        return {}  # an old flat config.yaml: every key, as the run resolved it
    if heading not in text:
        return values
    recorded = yaml.safe_load(text.split(heading, 1)[1])  # flat lines of a file that parsed
    recorded = recorded if isinstance(recorded, dict) else {}
    return {key: value for key, value in values.items() if key not in recorded}


def load_preset(name: str) -> Config:
    """A preset's config; a preset may start from another one with ``base: NAME``."""
    return _load(name, preset_dir(), ())


def load_source(name: str) -> Config:
    """The Config of a preset name or of a YAML config file path (see ``resolve``), unchecked."""
    return _load(name, None, ())


def resolve(preset: str, overrides: dict[str, Any]) -> Config:
    """The preset with overrides applied and checked; alpha=0 runs get a fine-tuning step size.

    ``preset`` is a preset name ('mamlkit presets') or the path of a YAML config file: a name
    ending in .yaml or .yml, or an existing file that is no preset's name. A config file holds
    ``key: value`` lines like a preset; it may start from a preset or from another file with
    ``base: NAME`` (a relative path counts from the file's folder), and its keys are checked
    like a preset's. A missing file, an unknown key, a value of the wrong type or out of range
    and a ``base:`` chain that loops are each one ConfigError sentence, raised here, before
    anything is built or written; so is a key set (by the file itself or an override, to other
    than its default) that this run does not read (``refuse_unused``).

    An alpha=0 run cannot adapt with its own step size, so it is evaluated with the preset's
    alpha unless ``eval_inner_lr`` says otherwise: the paper's "pretrained" baseline.
    """
    base, own, label = _load_own(preset, None, ())
    overrides = current_names(overrides)
    config = from_dict(overrides, base)
    if config.eval_inner_lr is None:
        config.eval_inner_lr = config.inner_lr if config.inner_lr > 0 else base.inner_lr
    check(config)
    try:  # the file's own keys apply to what it describes; a base it starts from may be partial
        refuse_unused(own, base)
    except ConfigError as error:
        raise ConfigError(f"{str(error).rstrip('.')} (in {label}).") from None
    refuse_unused(overrides, config)
    return config


def check(config: Config, machine: bool = True) -> None:
    """Refuse values no run can use, with one sentence that names the key and what it needs.

    Each key's own range comes from its metadata (``choices``, ``bounds``, ``nonempty``), so a
    new key is checked where it is declared; the rules below cover what depends on several keys
    or on this machine (``machine=False`` leaves those out: a run's saved config read back on
    another machine, whose ``device`` a resume may still change).
    """
    kinds = field_types()
    for f in dataclasses.fields(Config):
        _check_key(f.name, getattr(config, f.name), f.metadata, kinds[f.name])
    components.chosen(config)  # a task and an algorithm that are registered
    _check_supervised(config)
    _check_loggers(config, machine)
    if machine:
        _check_device(config)
    _check_family(config)
    _check_rl(config)


# What to write instead of an empty list, for the keys that need at least one entry.
_EMPTY_HINTS = {"eval_steps": "e.g. eval_steps=[0, 1, 5]",
                "adapt": "glob patterns like ['head.*'], or null to adapt every parameter"}


def _number_word(kind: Any) -> str:
    """``integer`` for int keys and lists of int, ``finite number`` for float keys."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    flat = [typing.get_args(o)[0] if typing.get_origin(o) is list else o for o in options]
    return "integer" if int in flat else "finite number"


def _has_blank(value: Any) -> bool:
    """A blank string, or a list holding one: a name or pattern that names nothing."""
    texts = value if isinstance(value, list) else [value]
    return any(isinstance(text, str) and not text.strip() for text in texts)


def _check_key(name: str, value: Any, meta: Any, kind: Any) -> None:
    """One key against its declared choices, bounds (every entry of a list) and emptiness."""
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"Config key {name!r} must be one of {', '.join(meta['choices'])}, "
                          f"got {value!r}.")
    if value is None:
        return
    if meta["nonempty"] and value == []:
        raise ConfigError(f"Config key {name!r} needs at least one entry "
                          f"({_EMPTY_HINTS.get(name, 'or null')}), got [].")
    if name != "description" and _has_blank(value):
        raise ConfigError(f"Config key {name!r} needs a non-blank name (or null), got "
                          f"{value!r}.")
    bounds: Bounds | None = meta["bounds"]
    entries = value if isinstance(value, list) else [value]
    if bounds is None or all(bounds.holds(v) for v in entries):
        return
    word = _number_word(kind)
    if isinstance(value, list):
        raise ConfigError(f"Config key {name!r} must hold {word}s {bounds.text()}, got "
                          f"{value!r}.")
    article = "an" if word == "integer" else "a"
    null = " (or null)" if isinstance(kind, types.UnionType) else ""
    raise ConfigError(f"Config key {name!r} must be {article} {word} {bounds.text()}{null}, "
                      f"got {value!r}.")


def _check_supervised(config: Config) -> None:
    """Model and task fit together (the networks a task can feed), then the task's own rules."""
    task = components.task(config.task)
    if isinstance(task, TaskSpec) and task.models:
        _check_model(config, task)
    task.check(config)


def _check_model(config: Config, task: TaskSpec) -> None:
    if config.model not in task.models:
        raise ConfigError(f"Config key 'model' is {config.model}, which does not fit task "
                          f"{config.task}; use model={' or model='.join(task.models)}.")
    if config.model == "mlp" and not config.hidden:
        raise ConfigError("Config key 'hidden' needs at least one layer width for model mlp, "
                          "e.g. hidden=[40, 40].")
    if config.model == "conv4" and len(config.hidden) != 1:
        raise ConfigError(f"Config key 'hidden' of model conv4 holds one entry, the filters of "
                          f"every layer (e.g. hidden=[64]), got {config.hidden}.")


def _check_loggers(config: Config, machine: bool) -> None:
    """Known loggers, jsonl among them; on this machine, each one's package installed."""
    for name in config.loggers:
        if name not in LOGGER_PACKAGES:
            raise ConfigError(f"Config key 'loggers' holds {name!r}, which is no logger; choose "
                              f"among {', '.join(LOGGER_PACKAGES)}.")
    if "jsonl" not in config.loggers:
        raise ConfigError(f"Config key 'loggers' must hold jsonl (metrics.jsonl is the record "
                          f"that resume, eval and plot read), got {config.loggers}; add jsonl, "
                          "e.g. loggers=[jsonl,tensorboard].")
    for name in config.loggers if machine else ():
        package = LOGGER_PACKAGES[name]
        if package is not None and not installed(package):
            raise ConfigError(f"Config key 'loggers' names {name}, which needs the {package} "
                              f"extra: pip install 'mamlkit[{package}]' (or leave {name} out of "
                              "loggers).")


def _check_device(config: Config) -> None:
    """device=cuda only where torch sees a GPU, so the run fails here, not after its setup."""
    if components.is_rl(config) or config.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA" if torch.version.cuda is None
               else "torch sees no CUDA GPU on this machine")
        raise ConfigError(f"Config key 'device' is cuda, but {why}; use device=cpu or auto.")


def _check_family(config: Config) -> None:
    """The algorithm-family rules that involve several keys, then the learner's own rules."""
    if config.min_meta_lr > config.meta_lr:
        raise ConfigError(f"Config key 'min_meta_lr' must not exceed meta_lr "
                          f"({config.meta_lr}), got {config.min_meta_lr}.")
    learner = components.learner(config.algorithm)
    if config.inner_steps < learner.min_inner_steps:
        raise ConfigError(f"Config key 'inner_steps' must be at least {learner.min_inner_steps} "
                          f"for algorithm {config.algorithm}, got {config.inner_steps}.")
    learner.check(config)


def _check_rl(config: Config) -> None:
    """The reinforcement-learning rules that involve several keys."""
    if config.min_std > config.init_std:
        raise ConfigError(f"Config key 'min_std' ({config.min_std}) must not exceed init_std "
                          f"({config.init_std}); lower min_std or raise init_std.")
    task, learner = components.chosen(config)
    if config.imitation_tasks and "imitation_tasks" not in task.keys:
        raise ConfigError(f"Config key 'imitation_tasks' (mixed meta-batches) works for "
                          f"{belongs_to('imitation_tasks')} only; set imitation_tasks=0.")
    if task.rl and not learner.rl:
        rl_learners = [spec for spec in components.learners().values() if spec.rl]
        raise ConfigError(f"algorithm {config.algorithm} has no meta-RL form here; choose "
                          f"{components.names_text(rl_learners, 'or')} for an RL task.")
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


def yaml_text(config: Config) -> str:
    """``config.yaml``'s text: the keys that apply by section, then the ``unused_keys``."""
    return _HEADER + format_sections(config, unused=True)


def save(config: Config, path: Path) -> None:
    """Write ``config.yaml``: the keys that apply, so a run's file shows what shaped it, and
    the ``unused_keys`` last, so that ``load`` gives back ``config`` field for field.

    The text goes to a temporary file in the same folder that then replaces ``path`` in one
    step, so a crash or a full disk never leaves a half-written config behind.
    """
    write_atomic(path, yaml_text(config))


def load(path: Path) -> Config:
    """A run's config from a sectioned ``config.yaml`` or an old flat one with every key.

    Keys left out (they do not apply) take their defaults; keys present, applicable or not,
    are taken as written, so old files give back the config they were saved from.
    """
    path = Path(path)
    return from_dict(_read_yaml(path, f"config file '{path}'"))
