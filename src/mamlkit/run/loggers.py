"""Where a run's records go: one logger per name in the ``loggers`` key, each handed every record.

A record is what one line of ``metrics.jsonl`` holds: ``iteration``, ``seconds`` and numbers.
``metrics.jsonl`` (``jsonl``) is the run's own record and always first: a resume trims it to its
checkpoint and the other loggers follow from it. TensorBoard's events are rebuilt from it at
every start (``events.py``); a W&B run cannot be rebuilt, so a resume continues the same W&B
run (its id is kept in the run directory) and logs each record at its iteration, where the
records after the checkpoint come again with the values of the first time (a resumed run
writes the records of an uninterrupted one).

The trackers' packages load when a run opens them (``pip install 'mamlkit[wandb]'``,
``[tensorboard]``); ``config.check`` refuses a logger whose package is missing, before anything
is written. Loggers live on rank 0 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mamlkit.run.atomic import write_atomic
from mamlkit.run.config import Config, ConfigError
from mamlkit.run.metrics import read_metrics

WANDB_ID = "mamlkit-run-id"  # in run_dir/wandb/, beside W&B's own files of the run


class Logger(Protocol):
    """What the loop needs of a logger: take records, then close."""

    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """``metrics.jsonl``: one JSON line per record, flushed at once (a kill loses none)."""

    def __init__(self, run_dir: Path, config: Config) -> None:
        self.file = (run_dir / "metrics.jsonl").open("a")

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardLogger:
    """Scalars ``meta/<key>`` at step ``iteration``, in event files rebuilt from
    ``metrics.jsonl`` (already trimmed to the checkpoint a resume starts from)."""

    def __init__(self, run_dir: Path, config: Config) -> None:
        from mamlkit.run.events import EventLog  # tensorboard's protobufs: only when asked

        self.events = EventLog.rebuild(run_dir / "tensorboard", read_metrics(run_dir))

    def log(self, record: dict[str, Any]) -> None:
        self.events.add(record)

    def close(self) -> None:
        self.events.close()


class WandbLogger:
    """A Weights & Biases run: project the run directory's parent folder (or ``WANDB_PROJECT``),
    name the run directory's, the config logged; records at step ``iteration``. W&B's settings
    (``WANDB_MODE=offline``, ``WANDB_ENTITY``, the login) are its own; its files go under
    ``run_dir/wandb``, with the run id that a resume continues."""

    def __init__(self, run_dir: Path, config: Config) -> None:
        import wandb

        folder = run_dir / "wandb"
        folder.mkdir(exist_ok=True)
        run_id = _wandb_id(folder / WANDB_ID)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or run_dir.resolve().parent.name,
                name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
                config=config.to_dict(), settings=wandb.Settings(console="off"))
        except Exception as error:  # no login, no network: W&B's own errors, of many types
            reason = " ".join(str(error).split()).rstrip(".") or type(error).__name__
            raise ConfigError(f"W&B did not start a run ({reason}); log in with 'wandb login', "
                              "set WANDB_MODE=offline, or leave wandb out of loggers.") from None

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["iteration"])
        if step < self.run.step:  # logged before the kill; W&B would drop it with a warning
            return
        self.run.log({k: v for k, v in record.items() if k != "iteration"}, step=step)

    def close(self) -> None:
        self.run.finish()


def _wandb_id(path: Path) -> str:
    """The run's W&B id: the one kept in ``path``, or a new random one written there
    (atomically; W&B takes any short lowercase id)."""
    if path.is_file():
        kept = path.read_text().strip()
        if kept:
            return kept
    run_id = secrets.token_hex(6)
    write_atomic(path, run_id + "\n")
    return run_id


LOGGERS: dict[str, Callable[[Path, Config], Logger]] = {
    "jsonl": JsonlLogger, "tensorboard": TensorBoardLogger, "wandb": WandbLogger}


def open_loggers(run_dir: Path, config: Config) -> list[Logger]:
    """The loggers ``config.loggers`` names, metrics.jsonl first; if one fails to open, those
    opened before it are closed again."""
    names = ["jsonl", *(name for name in config.loggers if name != "jsonl")]
    with contextlib.ExitStack() as opened:
        loggers = []
        for name in names:
            logger = LOGGERS[name](run_dir, config)
            opened.callback(logger.close)
            loggers.append(logger)
        opened.pop_all()
    return loggers


def close_loggers(loggers: list[Logger]) -> None:
    """Close every logger, the last opened first, even if one of them fails."""
    with contextlib.ExitStack() as closing:
        for logger in loggers:
            closing.callback(logger.close)


__all__ = ["LOGGERS", "JsonlLogger", "Logger", "TensorBoardLogger", "WandbLogger",
           "close_loggers", "open_loggers"]
