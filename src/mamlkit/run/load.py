"""One ``load`` for every run: the trained learner of a run directory, with its config."""

from __future__ import annotations

from pathlib import Path

import torch

from mamlkit.run import checkpoint
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
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunDirectoryError(f"{run_dir} is not a run directory (no config.yaml).")
    config = config_lib.load(config_path)
    if data_root is not None:
        config.data_root = str(data_root)
    learner = untrained(config)
    kept = checkpoint.best(run_dir) if which == "best" else None
    if kept is not None:
        path, iteration = kept
        learner.checkpoint = f"best (iteration {iteration})"
    else:
        path = checkpoint.latest(run_dir)
        if path is None:
            raise RunDirectoryError(f"{run_dir} holds no checkpoint yet.")
        iteration = int(path.name.split("_")[-1])
        learner.checkpoint = f"latest ({path.name})"
    checkpoint.load_model(path, learner)
    learner.iteration = iteration
    return learner


__all__ = ["load", "untrained"]
