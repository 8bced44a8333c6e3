"""The one training loop: run directory, resume, metrics, progress, time limit, checkpoints,
torchrun and the NaN stop, for every kind of task; the per-kind part is a step (``steps.py``)."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

from mamlkit.functional.schedules import cosine_lr
from mamlkit.functional.seeding import generator_from
from mamlkit.run import checkpoint, distributed
from mamlkit.run import config as config_lib
from mamlkit.run.config import Config
from mamlkit.run.errors import RunDirectoryError, TrainingDiverged
from mamlkit.run.memory import PeakMemory
from mamlkit.run.metrics import trim_metrics
from mamlkit.run.steps import make_step


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    learner: Any
    seconds: float


def _schedule(learner, optimizer: torch.optim.Optimizer, config: Config,
              iteration: int) -> None:
    """Per-iteration schedules, pure functions of the iteration so that resume stays exact:
    the learner's annealing (MAML++ MSL weights, derivative order) and cosine meta_lr."""
    learner.set_iteration(iteration, config.iterations)
    if config.cosine_meta_lr:
        lr = cosine_lr(config.meta_lr, config.min_meta_lr, iteration, config.iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr


def write_record(metrics: TextIO, writer: Any, iteration: int, began: float,
                 record: dict[str, float | int]) -> None:
    """One line of ``metrics.jsonl`` (with the iteration and elapsed seconds) and its scalars."""
    record = {"iteration": iteration, "seconds": round(time.perf_counter() - began, 3), **record}
    metrics.write(json.dumps(record) + "\n")
    metrics.flush()
    for key, value in record.items():
        if key != "iteration":
            writer.add_scalar(f"meta/{key}", value, iteration)


def prepare_run_dir(run_dir: Path, config: Config, resume: bool) -> Config:
    """Create the run directory (or check it for a resume) and return the config to use."""
    config_path = run_dir / "config.yaml"
    if resume:
        if not config_path.is_file() or checkpoint.latest(run_dir) is None:
            raise RunDirectoryError(f"Nothing to resume in {run_dir}: it holds no checkpoint.")
        return config_lib.load(config_path)
    if config_path.exists():
        raise RunDirectoryError(
            f"{run_dir} already holds a run; pass --resume to continue it or --out for a new one."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(config, config_path)
    return config


class _Discard:
    """Stands in for the metrics file and TensorBoard writer on ranks other than 0."""

    def write(self, *args) -> None: ...
    def flush(self) -> None: ...
    def add_scalar(self, *args, **kwargs) -> None: ...
    def close(self) -> None: ...


def _prepare_shared(run_dir: Path, config: Config, resume: bool,
                    context: distributed.Context) -> tuple[Config, Path | None]:
    """Rank 0 prepares the run directory; every rank gets its config and checkpoint to resume.

    Rank 0's outcome (or error) is broadcast, so all ranks go on or stop together and load the
    very same checkpoint; ranks other than 0 write nothing.
    """
    if not context.distributed:
        config = prepare_run_dir(run_dir, config, resume)
        return config, checkpoint.latest(run_dir) if resume else None
    outcome: tuple | None = None
    if context.is_main:
        try:
            config = prepare_run_dir(run_dir, config, resume)
            path = checkpoint.latest(run_dir) if resume else None
            outcome = (config.to_dict(), None if path is None else str(path), None)
        except RunDirectoryError as error:
            outcome = (None, None, str(error))
    values, path, error = distributed.broadcast_object(outcome)
    if error is not None:
        raise RunDirectoryError(error)
    return config_lib.from_dict(values), None if path is None else Path(path)


@dataclass
class _Sinks:
    """Where a run's records go: ``metrics.jsonl``, TensorBoard, the progress bar (rank 0)."""

    metrics: Any
    writer: Any
    bar: Any

    @staticmethod
    def open(run_dir: Path, config: Config, start: int, progress: bool,
             main: bool) -> _Sinks:
        from torch.utils.tensorboard import SummaryWriter

        writer = (SummaryWriter(str(run_dir / "tensorboard"), purge_step=start) if main
                  else _Discard())
        metrics = (run_dir / "metrics.jsonl").open("a") if main else _Discard()
        bar = tqdm(total=config.iterations, initial=start, disable=not progress or not main,
                   desc=run_dir.name, unit="it", dynamic_ncols=True)
        return _Sinks(metrics, writer, bar)

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()
        self.writer.close()


def _diverged(run_dir: Path, loss: float, iteration: int) -> TrainingDiverged:
    last = checkpoint.latest(run_dir)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint yet"
    return TrainingDiverged(
        f"The meta-loss became {loss} at iteration {iteration} ({where}); lower meta_lr or "
        "inner_lr (meta-RL: or max_kl) and train again or resume.")


def train(config: Config | None, run_dir: str | Path, resume: bool = False,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Meta-train as ``config`` says (any kind of task), writing everything into ``run_dir``.

    ``stop_after`` ends the loop early without a final checkpoint, as a kill would (for tests).
    """
    run_dir = Path(run_dir)
    context = distributed.setup()
    config, resume_from = _prepare_shared(run_dir, config, resume, context)
    torch.set_num_threads(config.threads)
    step = make_step(config, context, run_dir)
    generator = generator_from(config.seed + 1)
    start = 0
    if resume:
        start = checkpoint.load(resume_from, step.learner, step.optimizer, generator)["iteration"]
        if context.is_main:
            trim_metrics(run_dir, start)
    sinks = _Sinks.open(run_dir, config, start, progress, context.is_main)
    began = time.perf_counter()
    try:
        iteration = _iterate(step, config, run_dir, context, generator, sinks, start, began,
                             stop_after)
    finally:
        sinks.close()
    return TrainResult(run_dir, iteration, step.learner, time.perf_counter() - began)


def _iterate(step, config: Config, run_dir: Path, context: distributed.Context,
             generator: torch.Generator, sinks: _Sinks, start: int, began: float,
             stop_after: int | None) -> int:
    """The iterations from ``start + 1``; returns the last one completed."""
    peak = PeakMemory(getattr(step, "device", torch.device("cpu")))
    window: list[float] = []
    iteration = start
    for iteration in range(start + 1, config.iterations + 1):
        if stop_after is not None and iteration > stop_after:
            return iteration - 1
        _schedule(step.learner, step.optimizer, config, iteration)
        loss = step.update(generator)
        if not math.isfinite(loss):
            raise _diverged(run_dir, loss, iteration)
        window.append(loss)
        sinks.bar.update(1)
        out_of_time = config.time_limit is not None and distributed.agree(
            time.perf_counter() - began > 60 * config.time_limit)
        last = iteration == config.iterations or out_of_time
        record: dict[str, float | int] = {}
        if iteration % config.log_every == 0 or last:
            record.update(loss=sum(window) / len(window), peak_mem_mb=round(peak.read(), 1))
            record.update(step.log_record())
            window = []
            sinks.bar.set_postfix(step.postfix(record), refresh=False)
        if context.is_main and (iteration % config.val_every == 0 or last):
            record.update(step.validation(run_dir, iteration))
        if record:
            write_record(sinks.metrics, sinks.writer, iteration, began, record)
            peak.reset()  # the next window holds meta-steps only, not these evaluations
        if context.is_main and (iteration % config.checkpoint_every == 0 or last):
            checkpoint.save(run_dir, iteration, step.learner, step.optimizer, generator)
        if out_of_time:
            print(f"time limit of {config.time_limit} minutes reached at iteration "
                  f"{iteration}; continue with --resume", file=sys.stderr)
            break
    return iteration


__all__ = ["RunDirectoryError", "TrainResult", "TrainingDiverged", "prepare_run_dir", "train",
           "write_record"]
