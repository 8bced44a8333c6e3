"""Where learners, task distributions and environments say who they are.

Each component registers, in its own module, a spec: its name (``algorithm: NAME`` or
``task: NAME`` in a config), the config keys it reads beyond those every run reads, whether it
takes (learners) or is (tasks) a reinforcement-learning task, and a constructor from a run's
config. ``mamlkit.run`` looks names up here and dispatches on nothing else, so a new component is
one new module (and a preset); see docs/extending.md.

This module imports nothing of mamlkit: every layer may register here. ``discover(package)``
imports the modules of a package that register (found by parsing their source), so a new module in
``algorithms/``, ``tasks/`` or ``envs/`` is found without editing any other file, and a module
that does not register (a gymnasium or MuJoCo wrapper) is not imported. The config a constructor
receives is ``mamlkit.run.config.Config``, which sits above every component; components read it
by attribute only.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

Config = Any  # mamlkit.run.config.Config, read by attribute (it lives in the layer above)


class ConfigError(ValueError):
    """A bad preset name, config key or value; the message says what to change."""


def _no_check(config: Config) -> None:
    """A component without rules of its own beyond its keys' ranges."""


@dataclass(frozen=True)
class LearnerArgs:
    """What every learner's constructor takes from the run, resolved once by ``run.build``.

    ``inner_steps`` is at least 1 for RL tasks (their support trajectories are sampled per
    step); ``train_tasks`` builds the train split's task distribution on demand (the pretrained
    baseline sizes its head by its classes, whichever split is being built).
    """

    model: nn.Module
    inner_lr: float
    inner_steps: int
    loss_fn: Any
    batching: str
    chunk_size: int | None
    train_tasks: Callable[[], Any]

    @property
    def common(self) -> dict[str, Any]:
        """The keyword arguments every learner class takes the same way."""
        return {"loss_fn": self.loss_fn, "batching": self.batching,
                "chunk_size": self.chunk_size}


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What every component registers.

    ``keys``: the config keys that apply because this component is chosen (the others' own
    keys do not apply, and are refused when set); ``check`` raises ``ConfigError`` with one
    sentence for a value this component cannot use.
    """

    name: str
    doc: str
    keys: tuple[str, ...] = ()
    check: Callable[[Config], None] = _no_check


@dataclass(frozen=True, kw_only=True)
class LearnerSpec(Spec):
    """A learner, ``algorithm: name``: ``build(config, args)`` returns the ``nn.Module``.

    ``rl``: it takes RL tasks; ``min_inner_steps``: fewest inner steps it trains with;
    ``pretrains``: training is one step on global labels, not a meta-step with an inner loop
    (``run.pretrain_step``).
    """

    build: Callable[[Config, LearnerArgs], nn.Module]
    rl: bool = True
    min_inner_steps: int = 0
    pretrains: bool = False


@dataclass(frozen=True, kw_only=True)
class TaskSpec(Spec):
    """A distribution of supervised (H = 1) tasks, ``task: name``.

    ``build(config, split)`` returns the ``TaskDistribution`` of ``split`` (train, val, test);
    ``network(config, tasks)`` the model it trains when the config's ``model`` key names one of
    ``models`` (empty: the tasks bring their own model, and the model keys do not apply).
    ``metric`` is what its runs report; ``classes`` marks N-way tasks over a class-indexed
    dataset (``num_classes``); ``figure`` names the adaptation picture ``mamlkit plot`` draws
    (``function``: fits of a 1-D function, ``images``: labelled images; None: none);
    ``in_python``: the tasks come from Python (``run.custom``), no preset rebuilds them.
    """

    build: Callable[[Config, str], Any]
    network: Callable[[Config, Any], nn.Module]
    models: tuple[str, ...] = ()
    metric: str = "accuracy"
    classes: bool = False
    figure: str | None = None
    in_python: bool = False
    rl: bool = field(default=False, init=False)


@dataclass(frozen=True, kw_only=True)
class EnvSpec(Spec):
    """An environment whose RL (H > 1) tasks a run meta-learns, ``task: name``.

    ``make(**options)`` returns its ``BatchEnv`` (worker processes rebuild it from the name and
    the options, so both must pickle); ``options(config)`` are those the config sets.
    ``requires`` are the modules it needs (the ``rl`` extra), checked before it is built;
    ``figure``: ``trajectories`` for 2-D positions ``mamlkit plot`` can draw, else None.
    """

    make: Callable[..., Any]
    options: Callable[[Config], dict[str, Any]] = lambda config: {}
    requires: tuple[str, ...] = ("gymnasium",)
    figure: str | None = None
    metric: str = field(default="return", init=False)
    in_python: bool = field(default=False, init=False)
    rl: bool = field(default=True, init=False)


LEARNERS: dict[str, LearnerSpec] = {}
TASKS: dict[str, TaskSpec] = {}
ENVS: dict[str, EnvSpec] = {}
# The module that registered each name, by namespace (``algorithm`` or ``task``): a component's
# name belongs there (and in its presets).
HOMES: dict[tuple[str, str], str] = {}


def _table(spec: Spec) -> dict[str, Any]:
    if isinstance(spec, LearnerSpec):
        return LEARNERS
    if isinstance(spec, TaskSpec):
        return TASKS
    if isinstance(spec, EnvSpec):
        return ENVS
    raise TypeError(f"register takes a LearnerSpec, TaskSpec or EnvSpec, got {type(spec)}.")


def _namespace(spec: Spec) -> str:
    """The config key that names ``spec``: tasks and environments share ``task``."""
    return "algorithm" if isinstance(spec, LearnerSpec) else "task"


def home(spec: Spec) -> str:
    """The module that registered ``spec``'s name."""
    return HOMES.get((_namespace(spec), spec.name), "")


def register(spec: Spec) -> Spec:
    """Add ``spec`` to its kind's table; a task distribution and an environment share one
    namespace (both are ``task: name``). The same name from another module is refused; from
    the same module it replaces the old spec (the module ran again)."""
    if not spec.name or spec.name != spec.name.strip():
        raise ValueError(f"A component's name must be a non-blank word, got {spec.name!r}.")
    table = _table(spec)  # a spec of a known kind, before anything changes
    caller = sys._getframe(1).f_globals.get("__name__", "")
    key = (_namespace(spec), spec.name)
    if key in HOMES and HOMES[key] != caller:
        raise ValueError(f"{key[0]} {spec.name!r} is registered already (by {HOMES[key]}); "
                         "choose another name.")
    for shared in (TASKS, ENVS) if key[0] == "task" else (LEARNERS,):
        shared.pop(spec.name, None)
    table[spec.name] = spec
    HOMES[key] = caller
    return spec


def unregister(spec: Spec) -> None:
    """Forget ``spec``'s name (a test or notebook that registered a component for a while)."""
    HOMES.pop((_namespace(spec), spec.name), None)
    _table(spec).pop(spec.name, None)


_DISCOVERED: set[str] = set()


def _registers(source: str) -> bool:
    """The source calls ``register(...)`` or ``registry.register(...)`` (parsed, not imported;
    a mention in text or ``self.register_buffer`` is no call)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "register":
                return True
            if (isinstance(func, ast.Attribute) and func.attr == "register"
                    and isinstance(func.value, ast.Name) and func.value.id == "registry"):
                return True
    return False


def registering_modules(package: str) -> list[str]:
    """The modules directly inside ``package`` whose source calls ``register(``, by name, without
    importing any of them (only the package itself is imported, to find its folder)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise ValueError(f"{package!r} is not an importable package.")
    found = []
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("*.py")):
            if path.stem != "__init__" and _registers(path.read_text(encoding="utf-8")):
                found.append(f"{package}.{path.stem}")
    return found


def discover(package: str) -> None:
    """Import every module of ``package`` that registers a component (once per package)."""
    if package in _DISCOVERED:
        return
    for module in registering_modules(package):
        importlib.import_module(module)
    _DISCOVERED.add(package)


__all__ = ["ENVS", "LEARNERS", "TASKS", "ConfigError", "EnvSpec", "LearnerArgs", "LearnerSpec",
           "Spec", "TaskSpec", "discover", "home", "register", "registering_modules",
           "unregister"]
