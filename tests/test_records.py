"""What a run records across stops and resumes: ``metrics.jsonl`` and the TensorBoard events.

A resumed run writes the records an uninterrupted run writes (wall-clock fields aside), however
it stopped (a kill, a signal, the time limit) and wherever its checkpoint falls in a logging
window; the TensorBoard events hold every record of ``metrics.jsonl`` once, also after SIGKILLs;
a write error in them is one sentence and leaves the run resumable.
"""

import errno
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import slow_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mamlkit.cli import main
from mamlkit.run import loop, steps
from mamlkit.run.config import resolve
from mamlkit.run.loop import train
from mamlkit.run.metrics import read_metrics

SMALL = {"iterations": 20, "log_every": 5, "val_every": 10, "checkpoint_every": 5,
         "meta_batch_size": 4, "val_tasks": 5}
WALL_CLOCK = ("seconds", "peak_mem_mb", "env_steps_per_s")


def small_config(**extra):
    return resolve("sinusoid", {**SMALL, **extra})


def sets(**extra) -> list[str]:
    return [arg for key, value in {**SMALL, **extra}.items()
            for arg in ("--set", f"{key}={value}")]


def records(run: Path) -> list[dict]:
    """The run's records without the fields that measure wall-clock time or memory."""
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_metrics(run)]


def same_records_as_whole(run: Path, whole: Path) -> None:
    resumed, straight = records(run), records(whole)
    assert [r["iteration"] for r in resumed] == [r["iteration"] for r in straight]
    for a, b in zip(resumed, straight, strict=True):
        assert a == b, f"iteration {a['iteration']}: {a} != {b}"


# --- the records of a resumed run are those of the uninterrupted run ---------------------------

def test_a_kill_between_records_resumes_to_the_records_of_the_uninterrupted_run(tmp_path):
    config = small_config(checkpoint_every=4)  # checkpoints 4, 8, 12: inside logging windows
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "killed", progress=False, stop_after=13)  # resumes from 12
    train(None, tmp_path / "killed", resume=True, progress=False)
    same_records_as_whole(tmp_path / "killed", tmp_path / "whole")


def test_a_signal_between_records_resumes_to_the_records_of_the_uninterrupted_run(
        tmp_path, monkeypatch, capsys):
    train(small_config(), tmp_path / "whole", progress=False)
    original, count = steps.SupervisedStep.update, [0]

    def update(self, generator):
        count[0] += 1
        loss = original(self, generator)
        if count[0] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # let the handler run here, in this iteration
        return loss

    monkeypatch.setattr(steps.SupervisedStep, "update", update)
    with pytest.raises(loop.TrainingInterrupted):
        train(small_config(), tmp_path / "run", progress=False)
    monkeypatch.undo()
    train(None, tmp_path / "run", resume=True, progress=False)
    same_records_as_whole(tmp_path / "run", tmp_path / "whole")


class _Clock:
    """A perf_counter that advances 10 s per meta-step, so the time limit strikes at an
    iteration the test chooses (not one the machine's speed chooses)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_a_time_limit_between_records_resumes_to_the_records_of_the_uninterrupted_run(
        tmp_path, monkeypatch, capsys):
    train(small_config(), tmp_path / "whole", progress=False)
    clock, original = _Clock(), steps.SupervisedStep.update

    def update(self, generator):
        clock.now += 10.0
        return original(self, generator)

    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(steps.SupervisedStep, "update", update)
    result = train(small_config(time_limit=1), tmp_path / "run", progress=False)
    assert result.iteration == 7  # 70 s > 1 minute
    assert "time limit of 1.0 minutes reached at iteration 7" in capsys.readouterr().err
    monkeypatch.undo()
    train(None, tmp_path / "run", resume=True, progress=False,
          overrides={"time_limit": None})
    same_records_as_whole(tmp_path / "run", tmp_path / "whole")


def test_an_rl_resume_between_records_keeps_the_loss_and_env_steps_of_the_window(tmp_path):
    config = resolve("nav2d", {"iterations": 4, "log_every": 2, "val_every": 4,
                               "checkpoint_every": 1, "meta_batch_size": 3, "trajectories": 4,
                               "horizon": 20, "policy_hidden": [16], "val_tasks": 3,
                               "cg_iters": 3})
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "killed", progress=False, stop_after=3)  # resumes from 3
    train(None, tmp_path / "killed", resume=True, progress=False)
    same_records_as_whole(tmp_path / "killed", tmp_path / "whole")
    assert [r["iteration"] for r in read_metrics(tmp_path / "whole")] == [2, 4]


# --- TensorBoard holds every record of metrics.jsonl, once -------------------------------------

def tensorboard_scalars(run: Path, purge: bool = True) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` as TensorBoard shows it (``purge``: TensorBoard's view
    after restarts; without it, every event the files hold)."""
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0},
                              purge_orphaned_data=purge)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def metrics_as_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What ``metrics.jsonl`` says TensorBoard should show, at TensorBoard's float32."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(run):
        for key, value in record.items():
            if key != "iteration":
                single = torch.tensor(float(value), dtype=torch.float32).item()
                expected.setdefault(f"meta/{key}", []).append((record["iteration"], single))
    return expected


def assert_tensorboard_holds_the_metrics(run: Path) -> None:
    expected = metrics_as_scalars(run)
    assert expected
    for purge in (True, False):  # as TensorBoard shows it, and as the files hold it: once
        assert tensorboard_scalars(run, purge) == expected


_SLOW_CLI = slow_cli(0.05)


def _kill_after_record(argv: list[str], run: Path, iteration: int, cwd: Path) -> None:
    """Run the CLI in a process and SIGKILL it as soon as ``metrics.jsonl`` holds a record at
    ``iteration`` or later."""
    process = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *argv], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (max((r["iteration"] for r in read_metrics(run)), default=0) < iteration
               and process.poll() is None and time.monotonic() < deadline):
            time.sleep(0.01)
        assert process.poll() is None, process.communicate()
    finally:
        process.kill()
        process.communicate()


@pytest.mark.slow
def test_tensorboard_holds_every_record_once_after_sigkills_and_resumes(tmp_path):
    run = tmp_path / "run"
    extra = {"iterations": 40, "checkpoint_every": 10}
    argv = ["train", "sinusoid", "--out", str(run), "--no-progress", *sets(**extra)]
    _kill_after_record(argv, run, 15, tmp_path)  # killed past checkpoint 10
    _kill_after_record([*argv, "--resume"], run, 25, tmp_path)  # and past checkpoint 20
    train(None, run, resume=True, progress=False)
    assert [r["iteration"] for r in read_metrics(run)] == list(range(5, 41, 5))
    assert_tensorboard_holds_the_metrics(run)


def test_tensorboard_holds_the_records_after_a_stop_and_resume_in_process(tmp_path):
    run = tmp_path / "run"
    train(small_config(), run, progress=False, stop_after=13)  # resumes from 10
    train(None, run, resume=True, progress=False)
    train(None, run, resume=True, progress=False, overrides={"iterations": 30})
    assert_tensorboard_holds_the_metrics(run)


# --- a write error in the TensorBoard events -----------------------------------------------------

def test_a_full_disk_under_tensorboard_is_one_sentence_and_the_run_resumes(
        tmp_path, monkeypatch, capsys):
    """TensorBoard's events are written on the training thread: no other thread's traceback."""
    run = tmp_path / "run"
    real_open = io.open

    class Full:
        """An events file on a disk that fills once it holds 300 bytes."""

        def __init__(self, file) -> None:
            self.file = file

        def write(self, data) -> int:
            if self.file.tell() + len(data) > 300:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

    def full_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        named = not isinstance(file, int) and "tfevents" in os.fsdecode(file)
        return Full(opened) if named and any(c in mode for c in "wax") else opened

    threads_failed = []  # what would print "Exception in thread ..." and a traceback
    monkeypatch.setattr(threading, "excepthook", threads_failed.append)
    monkeypatch.setattr(io, "open", full_open)
    monkeypatch.setattr("builtins.open", full_open)
    assert main(["train", "sinusoid", "--out", str(run), "--no-progress", *sets()]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not threads_failed, err
    assert err.strip().splitlines() == [
        f"mamlkit: error: cannot use {run}: {os.strerror(errno.ENOSPC)}."]
    monkeypatch.undo()
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert [r["iteration"] for r in read_metrics(run)] == [5, 10, 15, 20]
    assert_tensorboard_holds_the_metrics(run)
