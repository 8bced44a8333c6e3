"""The meta-training loop: sample tasks, meta-loss, outer Adam step; logs, checkpoints, resume."""

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

from mamlkit import checkpoint, distributed
from mamlkit import config as config_lib
from mamlkit.algorithms import MAML
from mamlkit.build import VAL_SEED, build_learner, build_model, build_tasks, device_of
from mamlkit.config import Config
from mamlkit.functional.schedules import cosine_lr
from mamlkit.memory import PeakMemory
from mamlkit.scale import meta_loss_fn, meta_step_backward
from mamlkit.tasks import TaskDistribution, generator_from


class TrainingDiverged(RuntimeError):
    """The meta-loss became NaN or infinite; the message names the last good checkpoint."""


class RunDirectoryError(RuntimeError):
    """The run directory is not usable as asked (exists without --resume, nothing to resume)."""


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    learner: MAML
    seconds: float


def _val_metrics(learner: MAML, tasks: TaskDistribution, config: Config,
                 device: torch.device) -> dict[str, float]:
    """Pre- and post-adaptation query metric on fixed held-out tasks, for the learning curve."""
    with torch.random.fork_rng(devices=[]):
        batch = tasks.sample(config.val_tasks, generator_from(VAL_SEED)).to(device)
        steps = [0, max(config.inner_steps, 1)]
        curve = learner.adaptation_curve(batch, steps, tasks.metric,
                                         inner_lr=config.eval_inner_lr or config.inner_lr)
    return {"val_pre": curve[0].mean().item(), "val_post": curve[1].mean().item()}


def _train_metrics(learner: MAML, batch, metric: str, config: Config) -> dict[str, float]:
    """The task metric of the last meta-batch before and after adaptation (learning curves)."""
    with torch.random.fork_rng(devices=[]):
        curve = learner.adaptation_curve(batch, [0, max(config.inner_steps, 1)], metric,
                                         inner_lr=config.eval_inner_lr or config.inner_lr)
    return {"train_pre": curve[0].mean().item(), "train_post": curve[1].mean().item()}


def _schedule(learner, optimizer: torch.optim.Optimizer, config: Config,
              iteration: int) -> None:
    """Per-iteration schedules, pure functions of the iteration so that resume stays exact:
    the learner's annealing (MAML++ MSL weights, derivative order) and cosine meta_lr."""
    set_iteration = getattr(learner, "set_iteration", None)
    if set_iteration is not None:
        set_iteration(iteration, config.iterations)
    if getattr(config, "cosine_meta_lr", False):
        lr = cosine_lr(config.meta_lr, config.min_meta_lr, iteration, config.iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr


def _trim_metrics(path: Path, iteration: int) -> None:
    """Drop records past the checkpoint we resume from, so the curve has no duplicates."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
    path.write_text("".join(line + "\n" for line in kept))


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


def train(config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Meta-train as ``config`` says, writing everything into ``run_dir``.

    ``stop_after`` ends the loop early without a final checkpoint, as a kill would (for tests).
    """
    from torch.utils.tensorboard import SummaryWriter

    run_dir = Path(run_dir)
    context = distributed.setup()
    config, resume_from = _prepare_shared(run_dir, config, resume, context)
    torch.set_num_threads(config.threads)
    device = distributed.local_device(device_of(config), context)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    tasks = build_tasks(config, "train")
    val_tasks = build_tasks(config, "val")
    learner = build_learner(config, model, tasks)
    # the learner's parameters: theta plus learned meta-parameters (Meta-SGD, MAML++ rates)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.meta_lr)
    generator = generator_from(config.seed + 1)

    start = 0
    if resume:
        start = checkpoint.load(resume_from, learner, optimizer, generator)["iteration"]
        if context.is_main:
            _trim_metrics(run_dir / "metrics.jsonl", start)
    # only rank 0 writes files; the others log into sinks that keep nothing
    writer = (SummaryWriter(str(run_dir / "tensorboard"), purge_step=start) if context.is_main
              else _Discard())
    metrics = (run_dir / "metrics.jsonl").open("a") if context.is_main else _Discard()
    meta_loss = meta_loss_fn(learner, config.compile, config.checkpoint_inner)
    peak = PeakMemory(device)
    bar = tqdm(total=config.iterations, initial=start, disable=not progress or not context.is_main,
               desc=run_dir.name, unit="it", dynamic_ncols=True)
    began, window = time.perf_counter(), []
    iteration = start
    try:
        for iteration in range(start + 1, config.iterations + 1):
            if stop_after is not None and iteration > stop_after:
                iteration -= 1
                break
            # every rank samples the whole meta-batch; meta_step_backward takes this rank's share
            _schedule(learner, optimizer, config, iteration)
            batch = tasks.sample(config.meta_batch_size, generator).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss_value = meta_step_backward(
                meta_loss, batch, [p for g in optimizer.param_groups for p in g["params"]],
                context)
            if not math.isfinite(loss_value):
                last = checkpoint.latest(run_dir)
                where = f"the last good checkpoint is {last}" if last else "no checkpoint yet"
                raise TrainingDiverged(
                    f"The meta-loss became {loss_value} at iteration {iteration} ({where}); "
                    "lower meta_lr or inner_lr and train again or resume."
                )
            optimizer.step()
            window.append(loss_value)
            bar.update(1)
            out_of_time = config.time_limit is not None and distributed.agree(
                time.perf_counter() - began > 60 * config.time_limit)
            last = iteration == config.iterations or out_of_time
            record: dict[str, float | int] = {}
            if iteration % config.log_every == 0 or last:
                record["loss"] = sum(window) / len(window)
                record["peak_mem_mb"] = round(peak.read(), 1)
                window = []
                if context.is_main:
                    record.update(_train_metrics(learner, batch, tasks.metric, config))
                bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
            if context.is_main and (iteration % config.val_every == 0 or last):
                record.update(_val_metrics(learner, val_tasks, config, device))
            if record:
                write_record(metrics, writer, iteration, began, record)
                peak.reset()  # the next window holds meta-steps only, not these evaluations
            if context.is_main and (iteration % config.checkpoint_every == 0 or last):
                checkpoint.save(run_dir, iteration, learner, optimizer, generator)
            if out_of_time:
                print(f"time limit of {config.time_limit} minutes reached at iteration "
                      f"{iteration}; continue with --resume", file=sys.stderr)
                break
    finally:
        bar.close()
        metrics.close()
        writer.close()
    return TrainResult(run_dir, iteration, learner, time.perf_counter() - began)


def load(run_dir: str | Path) -> MAML:
    """The trained learner of a run directory (model with its latest weights, and its config).

    ``learner.config`` holds the run's config; adapt with ``learner.adapt(x, y)``.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunDirectoryError(f"{run_dir} is not a run directory (no config.yaml).")
    config = config_lib.load(config_path)
    path = checkpoint.latest(run_dir)
    if path is None:
        raise RunDirectoryError(f"{run_dir} holds no checkpoint yet.")
    model = build_model(config)
    learner = build_learner(config, model, build_tasks(config, "test"))
    checkpoint.load_model(path, learner)
    learner.config = config
    learner.iteration = int(path.name.split("_")[-1])
    return learner
