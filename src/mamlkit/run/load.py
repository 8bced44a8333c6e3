"""One ``load`` for every run: the trained learner of a run directory, with its config."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mamlkit.run import checkpoint, rundir
from mamlkit.run import config as config_lib
from mamlkit.run.build import build_learner, build_network, build_tasks
from mamlkit.run.errors import RunDirectoryError


def untrained(config: config_lib.Config):
    """The run's learner at iteration 0 (same architecture and seed): the "random" baseline."""
    tasks = build_tasks(config, "test")
    torch.manual_seed(config.seed)  # as training builds it (the RL policy seeds itself too)
    learner = build_learner(config, build_network(config, tasks), tasks)
    learner.config = config
    learner.iteration = 0
    learner.checkpoint = "untrained initial weights"
    return learner


def load(run_dir: str | Path, which: str = "best", data_root: str | Path | None = None):
    """The trained learner of a run directory; ``learner.config`` holds the run's config.

    ``which="best"`` takes ``best/`` where the run keeps one (meta-RL: the best validation
    post-adaptation return), else the latest checkpoint; ``"latest"`` always the latest.
    ``learner.iteration`` and ``learner.checkpoint`` say which weights were loaded. Adapt with
    ``learner.adapt(x, y)`` (supervised) or ``learner.adapted_params(support)``. ``data_root``
    names the dataset's folder where it has moved since training (config.yaml is not changed).

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
    learner = untrained(config)
    if kept is not None:
        path, iteration = kept
        learner.checkpoint = f"best (iteration {iteration})"
    else:
        if found.path is None:
            raise RunDirectoryError(f"{run_dir} holds no checkpoint yet.")
        note = checkpoint.skipped_note(found, "using")
        if note:
            print(f"mamlkit: warning: {note}.", file=sys.stderr)
        path, iteration = found.path, found.iteration
        learner.checkpoint = f"latest ({path.name})"
    checkpoint.load_model(path, learner)
    learner.iteration = iteration
    return learner


def _checkpoint_of(run_dir: Path, best_kept: bool) -> checkpoint.Usable:
    """The newest checkpoint that reads back; where ``best/`` is what loads, damaged
    checkpoints are no reason to refuse it (there is then no copy of the config to match)."""
    try:
        return checkpoint.usable(run_dir)
    except RunDirectoryError:
        if not best_kept:
            raise
        return checkpoint.Usable(None, 0, [])


__all__ = ["load", "untrained"]
