"""The learners, task distributions and environments a run's config names, looked up in
``mamlkit.registry``. Each registers itself in its own module; ``registry.discover`` imports the
modules of the component packages that register, with no simulator, plot or tracker loaded.
"""

from __future__ import annotations

from typing import Any

from mamlkit.registry import (
    ENVS,
    LEARNERS,
    TASKS,
    ConfigError,
    EnvSpec,
    LearnerSpec,
    TaskSpec,
    discover,
)

# The packages whose modules register components; a new module in one of them is found there.
COMPONENT_PACKAGES = ("mamlkit.algorithms", "mamlkit.tasks", "mamlkit.envs")


def _discover() -> None:
    """Import the modules that register components (once; then a dict lookup)."""
    import mamlkit.run.custom_task  # noqa: F401  (tasks given from Python: the run layer's own)

    for package in COMPONENT_PACKAGES:
        discover(package)


def learners() -> dict[str, LearnerSpec]:
    """Every registered learner by name, in the order they registered."""
    _discover()
    return dict(LEARNERS)


def tasks() -> dict[str, TaskSpec | EnvSpec]:
    """Every name ``task:`` may take: the supervised task distributions, then the
    environments (RL tasks)."""
    _discover()
    return {**TASKS, **ENVS}


def _known(key: str, name: Any, table: dict[str, Any]) -> Any:
    if isinstance(name, str) and name in table:
        return table[name]
    raise ConfigError(f"Config key {key!r} must be one of {', '.join(table)}, got {name!r}.")


def learner(name: str) -> LearnerSpec:
    """The learner ``algorithm: name`` names; an unknown name is one ConfigError sentence."""
    return _known("algorithm", name, learners())


def task(name: str) -> TaskSpec | EnvSpec:
    """The task distribution or environment ``task: name`` names (ConfigError if none)."""
    return _known("task", name, tasks())


def is_rl(config: Any) -> bool:
    """H > 1: the run's task is an environment (its batches hold episodes)."""
    return task(config.task).rl


def chosen(config: Any) -> tuple[TaskSpec | EnvSpec, LearnerSpec]:
    """The components ``config`` names: its task (or environment) and its learner."""
    return task(config.task), learner(config.algorithm)


def owners() -> dict[str, list[TaskSpec | EnvSpec | LearnerSpec]]:
    """Each config key that components claim, with the components that claim it."""
    claims: dict[str, list[TaskSpec | EnvSpec | LearnerSpec]] = {}
    for spec in [*tasks().values(), *learners().values()]:
        for key in spec.keys:
            claims.setdefault(key, []).append(spec)
    return claims


def names_text(specs: list[Any], joiner: str = "and") -> str:
    """``task nav2d``, ``tasks omniglot and folder``, ``algorithms maml or anil``: components as
    messages name them, learners after tasks."""
    parts = []
    for word, kind in (("task", (TaskSpec, EnvSpec)), ("algorithm", LearnerSpec)):
        names = [spec.name for spec in specs if isinstance(spec, kind)]
        if names:
            listed = names[0] if len(names) == 1 else (f"{', '.join(names[:-1])} {joiner} "
                                                       f"{names[-1]}")
            parts.append(f"{word}{'s' * (len(names) > 1)} {listed}")
    return f" {joiner} ".join(parts)


__all__ = ["chosen", "is_rl", "learner", "learners", "names_text", "owners", "task", "tasks"]
