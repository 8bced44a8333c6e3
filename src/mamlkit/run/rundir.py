"""Run directories that never get stuck: decide, lock, then write.

``plan`` reads the directory and decides what a start means (a new run, a directory left by a
start that failed before its first record, a resume and from which checkpoint) without writing
anything but the lock; the training loop then builds the model, data and environment, and only
after that succeeds does ``begin`` write ``config.yaml``, ``run.json`` and trim the metrics. A
failed build therefore leaves nothing behind that a second try would trip over.

One process trains in a directory at a time (``RunLock``: ``flock`` on ``run_dir/.lock``, which
the kernel drops when the process ends, however it ends). Every file written here is written to
a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mamlkit.run import checkpoint, provenance
from mamlkit.run import config as config_lib
from mamlkit.run.atomic import temporaries
from mamlkit.run.config import Config, ConfigError
from mamlkit.run.errors import NEW_OUT, OUT, RESUME, RunDirectoryError
from mamlkit.run.metrics import read_metrics, trim_metrics

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process per run directory is on the user
    fcntl = None  # type: ignore[assignment]

CONFIG, LOCK = "config.yaml", ".lock"
# Keys a resume may change: where and how fast it runs, how long, where its records go, how it
# is evaluated, and the size of the outer step from here on (meta_lr, the cosine schedule's end,
# TRPO's max_kl: what the advice after a NaN stop says to lower); none of them changes the
# meta-steps already taken (``iterations`` moves the end only, except for the cosine meta_lr
# schedule, which ``plan`` warns about). run.json records each change.
RESUMABLE = ("iterations", "time_limit", "data_root", "device", "threads", "loggers", "meta_lr",
             "min_meta_lr", "max_kl",
             *(key for key in config_lib.field_types() if key.startswith("eval_")))
# What a start leaves in a directory; cleared when a failed start's directory is reused.
_OUTPUTS = (provenance.NAME, "metrics.jsonl", "tensorboard", "wandb", "best", "checkpoints")


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``run_dir/.lock`` while a process trains there.

    The file stays after release: deleting it would race with a process that has just opened
    it. A second process gets a RunDirectoryError naming the holder's pid.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        if self.fd is not None or fcntl is None:
            return
        fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirectoryError(f"{self.run_dir} is in use by another training process "
                                    f"(pid {pid}).") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@dataclass
class Plan:
    """What a start will do, decided before anything is built or written (rank 0 decides)."""

    config: Config
    resume: bool
    checkpoint: Path | None = None  # the checkpoint to load; None: start at iteration 0
    start: int = 0
    changes: dict[str, Any] = field(default_factory=dict)  # keys a resume changed
    notes: list[str] = field(default_factory=list)  # warnings, one sentence each
    reuse: bool = False  # a directory left by a failed start: its outputs are cleared


def plan(run_dir: Path, config: Config | None, resume: bool, overrides: dict[str, Any] | None,
         lock: RunLock) -> Plan:
    """Decide what starting in ``run_dir`` means; writes nothing but the lock file.

    An existing directory is locked first, so the decision cannot race another process.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} is a file, not a directory; pass {OUT} a "
                                "folder for the run.")
    if run_dir.is_dir():
        lock.acquire()
    if resume:
        return _plan_resume(run_dir, overrides)
    if config is None:
        raise ValueError("train() needs a config unless it resumes")
    return _plan_fresh(run_dir, config)


def _plan_fresh(run_dir: Path, config: Config) -> Plan:
    """A new run; a directory left by a start that failed before any record is reused."""
    has_config = (run_dir / CONFIG).exists()
    if checkpoint.kept(run_dir) or checkpoint.latest(run_dir) is not None:
        raise RunDirectoryError(f"{run_dir} already holds a run; pass {RESUME} to continue "
                                f"it or {NEW_OUT} for a new one.")
    if has_config and read_metrics(run_dir):
        raise RunDirectoryError(
            f"{run_dir} already holds a run that stopped before its first checkpoint; pass "
            f"{RESUME} to train it again from iteration 0 with its config.yaml, or {NEW_OUT} "
            "for a new one.")
    return Plan(config, resume=False, reuse=has_config)


def _plan_resume(run_dir: Path, overrides: dict[str, Any] | None) -> Plan:
    """A resume: the saved config with the allowed changes, the newest checkpoint that reads."""
    if not (run_dir / CONFIG).is_file():
        raise RunDirectoryError(f"Nothing to resume in {run_dir}: it holds no run "
                                f"({CONFIG} is missing).")
    saved = read_config(run_dir / CONFIG)
    found = checkpoint.usable(run_dir)
    check_trained(saved, found, run_dir / CONFIG)
    config, changes = apply_changes(saved, overrides)
    notes = []
    skipped = checkpoint.skipped_note(found, "resuming from")
    if skipped:
        notes.append(skipped)
    if found.path is None:
        notes.append(f"{run_dir} holds no checkpoint yet; training it again from iteration 0 "
                     f"with its {CONFIG}")
    if config.iterations < found.iteration:
        raise ConfigError(f"iterations={config.iterations} is below the iteration the run has "
                          f"reached ({found.iteration}); {RESUME} can only extend a run.")
    if "iterations" in changes and config.cosine_meta_lr:
        notes.append(f"the cosine meta_lr schedule now ends at iteration {config.iterations}; "
                     f"the {found.iteration} iterations done followed the old end")
    return Plan(config, True, found.path, found.iteration, changes, notes)


def read_config(path: Path) -> Config:
    """A run's ``config.yaml``, checked like user input (all but what depends on this
    machine), or RunDirectoryError in one sentence if it does not read back or holds a value
    no run can use."""
    try:
        config = config_lib.load(path)
        config_lib.check(config, machine=False)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError, TypeError,
            AttributeError, ValueError) as error:
        reason = " ".join(str(error).split()).rstrip(".") or type(error).__name__
        raise RunDirectoryError(f"{path} does not load ({reason}); restore it or train into "
                                f"{NEW_OUT}.") from None
    return config


def check_trained(config: Config, found: checkpoint.Usable, path: Path) -> None:
    """Refuse a run's config that differs from the copy its checkpoint was trained with in a
    key a resume may not change (a file truncated, damaged or edited by hand): using it would
    go on, or evaluate, with other hyper-parameters or another model. Checkpoints written
    before they kept a copy are not matched."""
    if found.path is None or found.config is None:
        return
    try:
        trained = config_lib.from_dict(yaml.safe_load(found.config) or {})
    except (yaml.YAMLError, ConfigError, TypeError, AttributeError, ValueError):
        return  # a copy from another version of mamlkit: nothing to match against
    differences = [f"{key}: {json.dumps(getattr(config, key))} instead of "
                   f"{json.dumps(getattr(trained, key))}" for key in config_lib.field_types()
                   if key not in RESUMABLE and getattr(config, key) != getattr(trained, key)]
    if differences:
        copy = found.path / checkpoint.CONFIG
        raise RunDirectoryError(
            f"{path} differs from the config {found.path.name} was trained with "
            f"({', '.join(differences[:4])}{', ...' if len(differences) > 4 else ''}); "
            f"restore it with 'cp {copy} {path}' or train into {NEW_OUT}.")


def apply_changes(saved: Config, overrides: dict[str, Any] | None) -> tuple[Config,
                                                                            dict[str, Any]]:
    """``saved`` with a resume's ``--set`` values; only the RESUMABLE keys may differ.

    Values equal to the saved ones are no change, so repeating the original command's
    ``--set`` pairs with ``--resume`` works. The result is checked like user input, this
    machine included (``device=cuda`` where there is no GPU).
    """
    if not overrides:
        config_lib.check(saved)
        return saved, {}
    config = config_lib.from_dict(overrides, saved)
    changes = {key: getattr(config, key) for key in overrides
               if getattr(config, key) != getattr(saved, key)}
    refused = [key for key in changes if key not in RESUMABLE]
    if refused:
        raise ConfigError(f"{RESUME} can change only {', '.join(RESUMABLE)}, not "
                          f"{', '.join(refused)}; train a new run with {NEW_OUT} for that.")
    config_lib.check(config)
    config_lib.refuse_unused(changes, config)
    return config, changes


def begin(run_dir: Path, decided: Plan, lock: RunLock, world_size: int = 1) -> Plan:
    """Rank 0, after the build succeeded: create the directory and write the run's files.

    Returns the plan as carried out (a directory created meanwhile by another process is
    checked again once locked).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if not lock.held:
        lock.acquire()
        if not decided.resume:
            decided = dataclasses.replace(decided, reuse=_plan_fresh(run_dir, decided.config).reuse)
    _remove_temporaries(run_dir)
    if decided.reuse:
        _clear_outputs(run_dir)
    if not decided.resume or decided.changes:
        write_config(decided.config, run_dir / CONFIG)
    provenance.record(run_dir, decided.resume, decided.start, decided.changes, world_size)
    if decided.resume:
        trim_metrics(run_dir, decided.start)
    return decided


def _remove_temporaries(run_dir: Path) -> None:
    """What a kill in the middle of a rename-into-place write leaves (the ``.tmp`` files,
    also those of older versions, which wrote ``NAME.tmp``)."""
    checkpoint.remove_partial(run_dir)
    names = [f"{name}.tmp" for name in (CONFIG, provenance.NAME, "metrics.jsonl")]
    for path in [*(run_dir / name for name in names), *temporaries(run_dir)]:
        if path.is_file():
            path.unlink()


def _clear_outputs(run_dir: Path) -> None:
    """Remove what a failed start left (no checkpoint, no record): a fresh start follows."""
    for name in _OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_config(config: Config, path: Path) -> None:
    """Write ``config.yaml``; ``config.save`` replaces the file in one step (a kill leaves the
    old or the new one, and at most a temporary file that ``begin`` removes)."""
    config_lib.save(config, path)


__all__ = ["CONFIG", "LOCK", "RESUMABLE", "Plan", "RunLock", "apply_changes", "begin",
           "check_trained", "plan", "read_config", "write_config"]
