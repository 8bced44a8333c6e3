"""One ``load`` for every run: the trained learner of a run directory, with its config."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamlkit.run import checkpoint, rundir
from mamlkit.run import config as config_lib
from mamlkit.run.build import build_learner, build_network, build_tasks
from mamlkit.run.custom_task import Components
from mamlkit.run.errors import RunDirectoryError
from mamlkit.run.learner import Learner


@dataclass
class Loaded:
    """A run's learner with what was loaded: the run's ``config``, the ``iteration`` of its
    weights and which ``checkpoint`` they came from. It adapts and predicts as the learner does
    (``loaded.adapt(x, y)``, ``loaded(x, params)``); the learner's other attributes read
    through (``loaded.model``)."""

    learner: Learner
    config: config_lib.Config
    iteration: int
    checkpoint: str

    def adapt(self, x: Any, y: Any = None, steps: int | None = None,
              inner_lr: Any = None) -> dict[str, Tensor]:
        return self.learner.adapt(x, y, steps=steps, inner_lr=inner_lr)

    def __call__(self, x: Any, params: dict[str, Tensor] | None = None) -> Tensor:
        return self.learner(x, params)

    def __getattr__(self, name: str) -> Any:
        if name == "learner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.learner, name)


def untrained(config: config_lib.Config, given: Components | None = None) -> Loaded:
    """The run's learner at iteration 0 (same architecture and seed): the "random" baseline
    (``given``: the tasks and model of a ``custom`` run)."""
    tasks = build_tasks(config, "test", given)
    torch.manual_seed(config.seed)  # as training builds it (the RL policy seeds itself too)
    learner = build_learner(config, build_network(config, tasks, given), tasks, given)
    return Loaded(learner, config, 0, "untrained initial weights")


def load(run_dir: str | Path, which: str = "best",
         data_root: str | Path | None = None, given: Components | None = None) -> Loaded:
    """The trained learner of a run directory, as a ``Loaded``: ``.learner``, ``.config`` (the
    run's), ``.iteration`` and ``.checkpoint`` (which weights were loaded).

    ``which="best"`` takes ``best/`` where the run keeps one (meta-RL: the best validation
    post-adaptation return), else the latest checkpoint; ``"latest"`` always the latest. Adapt
    with ``loaded.adapt(x, y)`` (supervised) or ``loaded.learner.adapted_params(support)``.
    ``data_root`` names the dataset's folder where it has moved since training (config.yaml is
    not changed). ``given`` holds the tasks and model of a ``custom`` run (``run.custom.load``).

    The run's files are checked as a resume checks them: ``config.yaml`` like user input and
    against the copy its checkpoint was trained with, each checkpoint against its sums; a
    damaged latest checkpoint is skipped for the one before, with one warning line.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunDirectoryError(f"{run_dir} is not a run directory (no config.yaml).")
    config = rundir.read_config(config_path)
    kept = checkpoint.best(run_dir) if which == "best" else None
    found = _checkpoint_of(run_dir, best_kept=kept is not None)
    rundir.check_trained(config, found, config_path)
    if data_root is not None:
        config.data_root = str(data_root)
    loaded = untrained(config, given)
    if kept is not None:
        path, iteration = kept
        which_weights = f"best (iteration {iteration})"
    else:
        if found.path is None:
            raise RunDirectoryError(f"{run_dir} holds no checkpoint yet.")
        note = checkpoint.skipped_note(found, "using")
        if note:
            print(f"mamlkit: warning: {note}.", file=sys.stderr)
        path, iteration = found.path, found.iteration
        which_weights = f"latest ({path.name})"
    checkpoint.load_model(path, loaded.learner)
    return Loaded(loaded.learner, config, iteration, which_weights)


def _checkpoint_of(run_dir: Path, best_kept: bool) -> checkpoint.Usable:
    """The newest checkpoint that reads back; where ``best/`` is what loads, damaged
    checkpoints are no reason to refuse it (there is then no copy of the config to match)."""
    try:
        return checkpoint.usable(run_dir)
    except RunDirectoryError:
        if not best_kept:
            raise
        return checkpoint.Usable(None, 0, [])


__all__ = ["Loaded", "load", "untrained"]
