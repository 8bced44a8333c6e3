"""The one training loop: run directory, resume, metrics, progress, time limit, checkpoints,
signals, torchrun and the NaN stop, for every kind of task; the per-kind part is a step
(``steps.py``), and what a start may write and when is ``rundir.py``'s."""

from __future__ import annotations

import math
import pickle
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from mamlkit.functional.schedules import cosine_lr
from mamlkit.functional.seeding import generator_from
from mamlkit.run import checkpoint, components, distributed, rundir
from mamlkit.run.config import Config, applicable_keys
from mamlkit.run.console import Console
from mamlkit.run.custom_task import Components
from mamlkit.run.errors import RunDirectoryError, TrainingDiverged, TrainingInterrupted
from mamlkit.run.interrupts import Interrupts
from mamlkit.run.learner import Learner
from mamlkit.run.loggers import Logger, close_loggers, open_loggers
from mamlkit.run.memory import PeakMemory
from mamlkit.run.pretrain_step import PretrainStep
from mamlkit.run.steps import RLStep, SupervisedStep

T = TypeVar("T")


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    learner: Any
    seconds: float


def make_step(config: Config, context: distributed.Context, run_dir: Path,
              given: Components | None = None) -> SupervisedStep | RLStep:
    """The per-kind step of ``config``'s task: RL, supervised, or the supervised step of a
    learner that pretrains instead of meta-training (``given``: tasks and model from Python)."""
    task, learner = components.chosen(config)
    if task.rl:
        return RLStep(config, context, run_dir)
    return (PretrainStep if learner.pretrains else SupervisedStep)(config, context, run_dir,
                                                                   given)


def _schedule(learner: Learner, optimizer: torch.optim.Optimizer, config: Config,
              iteration: int) -> None:
    """Per-iteration schedules, pure functions of the iteration so that resume stays exact:
    the learner's annealing (MAML++ MSL weights, derivative order) and cosine meta_lr."""
    learner.set_iteration(iteration, config.iterations)
    if config.cosine_meta_lr:
        lr = cosine_lr(config.meta_lr, config.min_meta_lr, iteration, config.iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr


def write_record(loggers: list[Logger], iteration: int, began: float,
                 record: dict[str, float | int]) -> None:
    """One record (with the iteration and elapsed seconds) to every logger, metrics.jsonl
    first: the others hold only what the metrics hold."""
    record = {"iteration": iteration, "seconds": round(time.perf_counter() - began, 3), **record}
    for logger in loggers:
        logger.log(record)


def _on_main(context: distributed.Context, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 and its result (or its error) on every rank, so all go on or stop
    together and ranks other than 0 never touch the run directory."""
    if not context.distributed:
        return fn()
    value, shared = None, None
    if context.is_main:
        try:
            value = fn()
        except Exception as error:
            shared = error if _picklable(error) else RuntimeError(str(error))
            distributed.broadcast_object((None, shared))
            shared = None  # no frame <-> traceback cycle left for the interpreter's exit
            raise
    value, shared = distributed.broadcast_object((value, shared))
    if shared is not None:
        try:
            raise shared
        finally:
            shared = None
    return value


def _on_all(context: distributed.Context, fn: Callable[[], T]) -> T:
    """``fn()`` on every rank; if it fails on any rank, every rank stops (none waits forever
    in a collective of the loop)."""
    try:
        value = fn()
    except Exception:
        if context.distributed:
            distributed.agree(True)
        raise
    if context.distributed and distributed.agree(False):
        raise RuntimeError("Another torchrun process failed to build the run (its error is "
                           "printed above); nothing was written.")
    return value


def _picklable(error: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


@dataclass
class _Sinks:
    """Where a run's records go: the loggers (``loggers.py``) and the progress bar, on rank 0;
    other ranks have no loggers and a disabled bar."""

    loggers: list[Logger]
    bar: Any

    @staticmethod
    def open(run_dir: Path, config: Config, start: int, progress: bool,
             main: bool) -> _Sinks:
        """Open the loggers config.loggers names, after ``rundir.begin`` has trimmed
        ``metrics.jsonl`` to the checkpoint (the loggers follow from it)."""
        sinks = open_loggers(run_dir, config) if main else []
        bar = tqdm(total=config.iterations, initial=start, disable=not progress or not main,
                   desc=run_dir.name, unit="it", dynamic_ncols=True)
        return _Sinks(sinks, bar)

    def close(self) -> None:
        self.bar.close()
        close_loggers(self.loggers)


def _diverged(run_dir: Path, loss: float, iteration: int, config: Config) -> TrainingDiverged:
    """The NaN stop's sentence; its advice is a command that ``--resume`` accepts (the outer
    step's size is RESUMABLE, inner_lr is not: it changes what is learned)."""
    last = checkpoint.latest(run_dir)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint yet"
    key = "meta_lr" if "meta_lr" in applicable_keys(config) else "max_kl"  # TRPO: no meta_lr
    return TrainingDiverged(
        f"The meta-loss became {loss} at iteration {iteration} ({where}); resume with a "
        f"smaller outer step (--resume --set {key}=<lower than {getattr(config, key):g}>), or "
        "train again into a new --out with a lower inner_lr.")


def train(config: Config | None, run_dir: str | Path, resume: bool = False,
          progress: bool = True, stop_after: int | None = None,
          overrides: dict[str, Any] | None = None,
          given: Components | None = None) -> TrainResult:
    """Meta-train as ``config`` says (any kind of task), writing everything into ``run_dir``.

    The model, data and environment are built before anything is written, so a failed build
    leaves the directory as it was. ``resume`` continues from the newest readable checkpoint
    with the saved config (``config`` is ignored); ``overrides`` may change the keys in
    ``rundir.RESUMABLE`` (say ``iterations`` to extend a finished run). The directory is
    locked while training. SIGINT/SIGTERM stop after the current iteration with a checkpoint
    and raise TrainingInterrupted; ``time_limit`` stops the same way and returns. Such a stop
    writes no record of its own (the checkpoint keeps the logging window), so a resumed run
    writes the records of an uninterrupted one. ``stop_after`` ends the loop early without a
    final checkpoint, as a kill would (for tests). ``given`` holds the tasks and model of a
    ``custom`` run (``run.custom.train``).
    """
    run_dir = Path(run_dir)
    context = distributed.setup()
    lock = rundir.RunLock(run_dir)
    try:
        plan = _on_main(context, lambda: rundir.plan(run_dir, config, resume, overrides, lock))
        if context.is_main:
            for note in plan.notes:
                print(f"mamlkit: warning: {note}.", file=sys.stderr)
        torch.set_num_threads(plan.config.threads)
        step, generator, window = _on_all(context, lambda: _build(plan, context, run_dir, given))
        plan = _on_main(context, lambda: rundir.begin(run_dir, plan, lock, context.world_size))
        return _run(_Run(step, plan.config, run_dir, context, generator, window), plan.start,
                    progress, stop_after)
    except OSError as error:
        if error.filename is None:  # a write to an open file (metrics, disk full): name the run
            error.filename = str(run_dir)
        raise
    finally:
        lock.release()


def _build(plan: rundir.Plan, context: distributed.Context, run_dir: Path,
           given: Components | None):
    """The step (model, data, environment, learner, optimizer), the task generator and the
    meta-losses of the logging window, from the plan's checkpoint when it resumes from one."""
    step = make_step(plan.config, context, run_dir, given)
    generator = generator_from(plan.config.seed + 1)
    window: list[float] = []
    if plan.checkpoint is not None:
        state = checkpoint.load(plan.checkpoint, step.learner, step.optimizer, generator)
        if "meta_lr" in plan.changes:  # the loaded optimizer state holds the old one
            for group in step.optimizer.param_groups:
                group["lr"] = plan.config.meta_lr
        window = _restore_window(plan.checkpoint, state, step)
    return step, generator, window


_WINDOW = "log_window"  # the loop state's key for the window (see _window_state)


def _window_state(window: list[float], step: Any) -> dict[str, Any]:
    """What a checkpoint keeps of the logging window, so that a resume between two records
    writes the record the uninterrupted run writes: the meta-losses since the last record
    (their mean is the record's ``loss``, summed in the same order) and the step's own sums
    (meta-RL's environment steps). Called on every rank: the step may sum over the ranks."""
    return {_WINDOW: {"losses": list(window), "step": step.window_state()}}


def _restore_window(path: Path, state: dict[str, Any], step: Any) -> list[float]:
    """The meta-losses of the window saved in checkpoint ``path`` (none in checkpoints written
    before windows were kept), after handing the step its part."""
    saved = state.get(_WINDOW, {"losses": [], "step": {}})
    losses = saved.get("losses") if isinstance(saved, dict) else None
    try:
        if not isinstance(losses, list) or not all(math.isfinite(x) for x in losses):
            raise TypeError(losses)
        step.restore_window(saved["step"])
    except (TypeError, ValueError, KeyError, AttributeError):
        raise RunDirectoryError(f"{path / 'state.json'} holds a damaged {_WINDOW}; delete "
                                f"{path} to resume from the checkpoint before it.") from None
    return [float(x) for x in losses]


@dataclass
class _Run:
    """What the iterations share: the step, where records go, the stop signals."""

    step: Any
    config: Config
    run_dir: Path
    context: distributed.Context
    generator: torch.Generator
    window: list[float] = field(default_factory=list)  # meta-losses since the last record
    sinks: _Sinks | None = None
    console: Console | None = None  # the lines a person reads (console.py)
    interrupts: Interrupts | None = None
    began: float = 0.0
    flags: torch.Tensor = field(default_factory=lambda: torch.zeros(2))  # _stop_flags' buffer


def _run(run: _Run, start: int, progress: bool, stop_after: int | None) -> TrainResult:
    """Open the records, install the signal handlers, iterate; close and restore either way."""
    run.sinks = _Sinks.open(run.run_dir, run.config, start, progress, run.context.is_main)
    run.console = Console(run.sinks.bar, run.config.iterations, start, run.config.val_tasks,
                          bar_shown=progress, main=run.context.is_main)
    run.began = time.perf_counter()
    try:
        with Interrupts() as run.interrupts:
            iteration = _iterate(run, start, stop_after)
    except TrainingInterrupted as interrupted:
        if run.context.is_main:
            run.sinks.bar.clear()
            print(interrupted, file=sys.stderr)
        raise
    finally:
        run.sinks.close()
    return TrainResult(run.run_dir, iteration, run.step.learner,
                       time.perf_counter() - run.began)


def _iterate(run: _Run, start: int, stop_after: int | None) -> int:
    """The iterations from ``start + 1``; returns the last one completed."""
    config, step = run.config, run.step
    # opened by _run
    assert run.interrupts is not None and run.sinks is not None and run.console is not None
    peak = PeakMemory(getattr(step, "device", torch.device("cpu")))
    window = run.window
    iteration = start
    for iteration in range(start + 1, config.iterations + 1):
        if stop_after is not None and iteration > stop_after:
            return iteration - 1
        run.interrupts.iteration = iteration
        _schedule(step.learner, step.optimizer, config, iteration)
        loss = step.update(run.generator)
        if not math.isfinite(loss):
            raise _diverged(run.run_dir, loss, iteration, config)
        window.append(loss)
        run.sinks.bar.update(1)
        run.console.tick(iteration)
        out_of_time, interrupted = _stop_flags(run)
        last = iteration == config.iterations
        if _record(run, iteration, window, peak, last):
            window = []
        # a stop (time limit, signal) writes no record of its own: its window goes into the
        # checkpoint, so the resumed run writes the records of an uninterrupted one
        saved = iteration % config.checkpoint_every == 0 or last or out_of_time
        if saved:
            _save(run, iteration, window)
        if interrupted and not last:
            _stop_on_signal(run, iteration, window, saved)
        if out_of_time:
            print(f"time limit of {config.time_limit} minutes reached at iteration "
                  f"{iteration}; continue with --resume", file=sys.stderr)
            break
    return iteration


def _stop_flags(run: _Run) -> tuple[bool, bool]:
    """Whether the time limit has passed and whether a signal asked to stop, agreed by all
    ranks (every rank stops at the same iteration, or a collective would hang)."""
    limit = run.config.time_limit
    out_of_time = limit is not None and time.perf_counter() - run.began > 60 * limit
    assert run.interrupts is not None  # installed by _run
    interrupted = run.interrupts.signum is not None
    if run.context.distributed:
        # one buffer for the whole run: a tensor that outlives each all-reduce leaves gloo's
        # worker thread no Python object to free (which needs the GIL, racing the exit)
        run.flags.copy_(torch.tensor([float(out_of_time), float(interrupted)]))
        dist.all_reduce(run.flags, op=dist.ReduceOp.MAX)
        out_of_time, interrupted = bool(run.flags[0] > 0), bool(run.flags[1] > 0)
    return out_of_time, interrupted


def _record(run: _Run, iteration: int, window: list[float], peak: PeakMemory,
            last: bool) -> bool:
    """The metrics record of ``iteration``, if one is due; True if it took the loss window."""
    config, step = run.config, run.step
    assert run.sinks is not None and run.console is not None  # opened by _run
    record: dict[str, float | int] = {}
    logged = iteration % config.log_every == 0 or last
    postfix: dict[str, str] = {}
    if logged:
        record.update(loss=sum(window) / len(window), peak_mem_mb=round(peak.read(), 1))
        record.update(step.log_record())
        postfix = step.postfix(record)
        run.sinks.bar.set_postfix(postfix, refresh=False)
    if run.context.is_main and (iteration % config.val_every == 0 or last):
        record.update(step.validation(run.run_dir, iteration))
    if record:
        write_record(run.sinks.loggers, iteration, run.began, record)
        run.console.after_record(iteration, record, postfix)  # after it is written
        peak.reset()  # the next window holds meta-steps only, not these evaluations
    return logged


def _save(run: _Run, iteration: int, window: list[float]) -> None:
    """Checkpoint ``iteration`` with the logging window (every rank calls it, rank 0 writes)."""
    extra = _window_state(window, run.step)
    if run.context.is_main:
        step = run.step
        checkpoint.save(run.run_dir, iteration, step.learner, step.optimizer, run.generator,
                        extra, config=run.config)


def _stop_on_signal(run: _Run, iteration: int, window: list[float], saved: bool) -> None:
    """Checkpoint ``iteration`` (unless just done) and raise TrainingInterrupted."""
    if not saved:
        _save(run, iteration, window)
    assert run.interrupts is not None  # installed by _run
    signum = run.interrupts.signum or signal.SIGTERM  # a rank whose peer got the signal
    raise TrainingInterrupted(f"interrupted at iteration {iteration}; checkpoint written; "
                              "continue with --resume", signum, iteration)


__all__ = ["RunDirectoryError", "TrainResult", "TrainingDiverged", "TrainingInterrupted",
           "train", "write_record"]
