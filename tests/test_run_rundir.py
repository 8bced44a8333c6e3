"""Run directories that never get stuck: nothing written before the build, signals that stop
at an iteration with a checkpoint, resumes that may extend a run, one process per directory,
damaged checkpoints and files, OS errors, and run.json provenance."""

import errno
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
import torch
from cli_helpers import one_error_line, slow_cli
from safetensors.torch import load_file, save_file

import mamlkit
from mamlkit.cli import main
from mamlkit.run import checkpoint, interrupts, provenance, rundir, steps
from mamlkit.run import config as config_lib
from mamlkit.run.config import resolve
from mamlkit.run.errors import RunDirectoryError, TrainingInterrupted
from mamlkit.run.loop import train
from mamlkit.run.metrics import read_metrics

SMALL = {"iterations": 20, "log_every": 5, "val_every": 10, "checkpoint_every": 5,
         "meta_batch_size": 4, "val_tasks": 5}


def small_config(**extra):
    return resolve("sinusoid", {**SMALL, **extra})


def sets(**extra) -> list[str]:
    """``--set key=value`` for SMALL with ``extra``: the CLI's spelling of ``small_config``."""
    return [arg for key, value in {**SMALL, **extra}.items()
            for arg in ("--set", f"{key}={value}")]


def weights(run_dir):
    return load_file(checkpoint.latest(run_dir) / "model.safetensors")


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)




# --- 1. nothing is written until the build succeeds --------------------------------------------

def test_a_failed_build_writes_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such dataset")

    monkeypatch.setattr("mamlkit.run.loop.make_step", broken)
    with pytest.raises(RuntimeError, match="no such dataset"):
        train(small_config(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    train(small_config(iterations=5), tmp_path / "run", progress=False)  # the same start works


def test_the_directory_of_an_older_failed_start_is_reused(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)  # what the old order left: config, no records
    (run / "tensorboard" / "events.out.tfevents.old").write_text("x")
    config_lib.save(small_config(seed=9), run / "config.yaml")
    (run / "metrics.jsonl").write_text("")
    assert main(["train", "sinusoid", "--out", str(run), "--no-progress", *sets()]) == 0
    assert not (run / "tensorboard" / "events.out.tfevents.old").exists()
    assert config_lib.load(run / "config.yaml").seed == 0
    assert [r["iteration"] for r in read_metrics(run)] == [5, 10, 15, 20]


def test_a_nan_at_iteration_1_does_not_block_the_same_command(tmp_path, capsys):
    argv = ["train", "sinusoid", "--out", str(tmp_path / "run"), "--no-progress",
            *sets(inner_lr="1e30")]
    for _ in range(2):  # the second try meets the same NaN, not "already holds a run"
        assert main(argv) == 2
        assert "became nan at iteration 1 (no checkpoint yet)" in one_error_line(capsys)
    assert main(["train", "sinusoid", "--out", str(tmp_path / "run"), "--no-progress",
                 *sets()]) == 0


def test_a_run_stopped_before_its_first_checkpoint_can_be_trained_again(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_config(), tmp_path / "whole", progress=False)
    train(small_config(), run, progress=False, stop_after=3)  # records at... none, 3 < 5
    train(small_config(log_every=1), tmp_path / "logged", progress=False, stop_after=3)
    assert main(["train", "sinusoid", "--out", str(tmp_path / "logged"), "--no-progress",
                 *sets(log_every=1)]) == 2
    assert "--resume (resume=True) to train it again from iteration 0" in one_error_line(capsys)
    train(None, run, resume=True, progress=False)  # no checkpoint: again from iteration 0
    assert "holds no checkpoint yet" in capsys.readouterr().err
    assert same_weights(run, tmp_path / "whole")


# --- 2. SIGINT and SIGTERM ---------------------------------------------------------------------

def _signal_at(monkeypatch, iteration: int, times: int = 1) -> None:
    """Make the step send this process SIGTERM during meta-step ``iteration``."""
    original, count = steps.SupervisedStep.update, [0]

    def update(self, generator):
        count[0] += 1
        loss = original(self, generator)
        if count[0] == iteration:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)  # let the handler run here, in this iteration
        return loss

    monkeypatch.setattr(steps.SupervisedStep, "update", update)


def test_sigterm_stops_after_the_iteration_with_a_checkpoint_and_resumes_exactly(
        tmp_path, monkeypatch, capsys):
    previous = signal.getsignal(signal.SIGTERM)
    train(small_config(), tmp_path / "whole", progress=False)
    capsys.readouterr()  # its validation lines
    _signal_at(monkeypatch, 7)
    with pytest.raises(TrainingInterrupted) as caught:
        train(small_config(), tmp_path / "run", progress=False)
    assert caught.value.iteration == 7 and caught.value.exit_code == 143
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted at iteration 7; checkpoint written; continue with --resume"]
    assert checkpoint.latest(tmp_path / "run").name == "step_00000007"
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    monkeypatch.undo()
    assert train(None, tmp_path / "run", resume=True, progress=False).iteration == 20
    assert same_weights(tmp_path / "run", tmp_path / "whole")
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_second_signal_abandons_the_iteration(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(interrupts, "GRACE", 0.0)
    _signal_at(monkeypatch, 7, times=2)
    with pytest.raises(TrainingInterrupted, match="interrupted again during iteration 7"):
        train(small_config(), tmp_path / "run", progress=False)
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert checkpoint.latest(tmp_path / "run").name == "step_00000005"


def test_signals_close_together_are_one_request(tmp_path, monkeypatch, capsys):
    """torchrun forwards a SIGTERM right after the terminal's SIGINT: still a clean stop."""
    _signal_at(monkeypatch, 7, times=2)
    with pytest.raises(TrainingInterrupted, match="interrupted at iteration 7; checkpoint"):
        train(small_config(), tmp_path / "run", progress=False)
    assert checkpoint.latest(tmp_path / "run").name == "step_00000007"


def test_a_signal_during_the_last_iteration_lets_the_run_finish(tmp_path, monkeypatch):
    _signal_at(monkeypatch, 20)
    assert train(small_config(), tmp_path / "run", progress=False).iteration == 20


def test_interrupts_restore_the_previous_handlers():
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    with interrupts.Interrupts() as caught:
        assert signal.getsignal(signal.SIGINT) != before[signal.SIGINT]
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert caught.signum == signal.SIGINT
    assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before


_SLOW_CLI = slow_cli(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_cli_process_resumes_bit_for_bit(tmp_path, capsys, signum, code):
    extra = {"iterations": 40, "checkpoint_every": 10}
    run = tmp_path / "run"
    argv = ["train", "sinusoid", "--out", str(run), "--no-progress", *sets(**extra)]
    process = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *argv], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not read_metrics(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        # meanwhile the directory is locked: a second process is refused by name
        assert main(argv[:-len(sets(**extra))] + ["--resume"]) == 2
        assert f"is in use by another training process (pid {process.pid})" in \
            one_error_line(capsys)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == code, err
    (line,) = err.strip().splitlines()
    stopped = int(re.fullmatch(r"interrupted at iteration (\d+); checkpoint written; "
                               r"continue with --resume", line).group(1))
    assert 5 <= stopped < 40 and checkpoint.latest(run).name == f"step_{stopped:08d}"
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 0
    train(small_config(**extra), tmp_path / "whole", progress=False)
    assert same_weights(run, tmp_path / "whole")
    assert [r["iteration"] for r in read_metrics(run)] == list(range(5, 41, 5))


# --- 3. what --resume may change ---------------------------------------------------------------

def test_extending_a_finished_run_equals_the_longer_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--out", str(run), "--no-progress", *sets()]) == 0
    assert main(["train", "sinusoid", "--out", str(run), "--no-progress", "--resume",
                 "--set", "iterations=40", "--set", "meta_batch_size=4"]) == 0  # 4: unchanged
    train(small_config(iterations=40), tmp_path / "whole", progress=False)
    assert same_weights(run, tmp_path / "whole")
    assert config_lib.load(run / "config.yaml").iterations == 40
    assert [r["iteration"] for r in read_metrics(run)] == list(range(5, 41, 5))
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert [(s["start_iteration"], s["changed"]) for s in sessions] == [
        (0, {}), (20, {"iterations": 40})]


def test_resume_finds_the_default_directory_named_without_the_new_iterations(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "sinusoid", "--no-progress", *sets()]) == 0
    assert main(["train", "sinusoid", "--no-progress", *sets(), "--resume", "--set",
                 "iterations=25", "--set", "time_limit=30"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["sessions"][1]["changed"] == {
        "iterations": 25, "time_limit": 30.0}


def test_resume_takes_data_root_and_eval_keys_and_refuses_others_by_name(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_config(), run, progress=False)
    base = ["train", "sinusoid", "--out", str(run), "--no-progress", "--resume"]
    assert main([*base, "--set", "inner_lr=0.5", "--set", "seed=3", "--set",
                 "threads=1"]) == 2
    line = one_error_line(capsys)
    assert "--resume (resume=True) can change only iterations" in line
    assert "not inner_lr, seed;" in line
    assert main([*base, "--set", "iterations=10"]) == 2
    assert "below the iteration the run has reached (20)" in one_error_line(capsys)
    # data_root is resumable, but a sinusoid run reads none: refused like any such key
    assert main([*base, "--data-root", str(tmp_path / "data")]) == 2
    assert "'data_root' (for tasks folder and omniglot)" in one_error_line(capsys)
    assert main([*base, "--set", "eval_tasks=50", "--set", "device=cpu"]) == 0
    saved = config_lib.load(run / "config.yaml")
    assert (saved.data_root, saved.eval_tasks, saved.device) == (None, 50, "cpu")
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


# --- 4. one training process per run directory -------------------------------------------------

def test_a_locked_directory_is_refused_and_errors_release_the_lock(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_config(), run, progress=False)
    holder = rundir.RunLock(run)
    holder.acquire()
    try:
        assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress",
                     "--set", "iterations=25"]) == 2
        assert one_error_line(capsys) == (f"mamlkit: error: {run} is in use by another "
                                          f"training process (pid {os.getpid()}).")
        assert main(["train", "sinusoid", "--out", str(run), "--no-progress", *sets()]) == 2
        assert "in use by another training process" in one_error_line(capsys)
    finally:
        holder.release()
    # an error (already holds a run) and a divergence each release the lock
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        train(small_config(), run, progress=False)
    assert main(["train", "sinusoid", "--out", str(tmp_path / "nan"), "--no-progress",
                 *sets(inner_lr="1e30")]) == 2
    for path in (run, tmp_path / "nan"):
        again = rundir.RunLock(path)
        again.acquire()
        again.release()
    train(None, run, resume=True, progress=False, overrides={"iterations": 25})


# --- 5. damaged checkpoints and files ----------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate-model", "empty-optimizer", "bad-state",
                                    "missing-state", "bad-pointer"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    run = tmp_path / "run"
    train(small_config(), tmp_path / "whole", progress=False)
    train(small_config(), run, progress=False, stop_after=13)  # checkpoints 5 and 10
    last = run / "checkpoints" / "step_00000010"
    if damage == "truncate-model":
        data = (last / "model.safetensors").read_bytes()
        (last / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "empty-optimizer":
        (last / "optimizer.safetensors").write_bytes(b"")
    elif damage == "bad-state":
        (last / "state.json").write_text('{"iteration": 10, "param_gr')
    elif damage == "missing-state":
        (last / "state.json").unlink()
    else:
        (run / "checkpoints" / "latest").write_text("")
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    if damage != "bad-pointer":  # an empty pointer: the newest checkpoint is used, no loss
        assert len(warnings) == 1 and "step_00000010" in warnings[0]
        assert warnings[0].endswith("resuming from step_00000005.")
    assert same_weights(run, tmp_path / "whole")
    assert [r["iteration"] for r in read_metrics(run)] == [5, 10, 15, 20]


def test_no_usable_checkpoint_is_one_sentence(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_config(), run, progress=False, stop_after=13)
    for path in checkpoint.kept(run):
        (path / "model.safetensors").write_bytes(b"\0" * 10)
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "No usable checkpoint in" in line and "step_00000010 (model.safetensors:" in line


def test_verify_reads_each_file_of_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(small_config(iterations=5), run, progress=False)
    path = checkpoint.latest(run)
    assert checkpoint.verify(path)["iteration"] == 5
    (path / "state.json").write_text(json.dumps({"iteration": 5}))
    with pytest.raises(RunDirectoryError, match="state.json: its bytes do not match the sha256"):
        checkpoint.verify(path)
    (path / "SHA256SUMS").unlink()  # as written before sums were recorded: parse-checked
    with pytest.raises(RunDirectoryError, match="state.json: lacks param_groups"):
        checkpoint.verify(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(RunDirectoryError, match="model.safetensors"):
        checkpoint.verify(path)


def test_a_damaged_config_yaml_is_one_sentence(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_config(iterations=5), run, progress=False)
    for text in ("iterations: [5\n  seed: {", "inner_lr: 0.01\nno_such_key: 1\n", "- a list\n"):
        (run / "config.yaml").write_text(text)
        assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 2
        assert f"{run / 'config.yaml'} does not load (" in one_error_line(capsys)


def test_a_config_yaml_edited_to_another_model_is_one_sentence(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_config(iterations=5), run, progress=False)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("hidden: [40, 40]", "hidden: [20, 20]"))
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert ("differs from the config step_00000005 was trained with (hidden: [20, 20] "
            "instead of [40, 40]); restore it with 'cp ") in one_error_line(capsys)


def test_a_damaged_best_json_is_one_sentence(tmp_path, capsys):
    run = tmp_path / "run"
    train(small_config(iterations=5), run, progress=False)
    (run / "best").mkdir()
    save_file(load_file(checkpoint.latest(run) / "model.safetensors"),
              run / "best" / "model.safetensors")
    (run / "best" / "best.json").write_text('{"iteration": 5, "val_p')
    with pytest.raises(RunDirectoryError, match="best.json is unreadable"):
        checkpoint.best_value(run)
    assert main(["eval", str(run), "--tasks", "5", "--no-progress"]) == 2
    assert "best.json is unreadable" in one_error_line(capsys)


def test_a_kill_inside_the_metrics_trim_still_resumes(tmp_path):
    run = tmp_path / "run"
    train(small_config(), tmp_path / "whole", progress=False)
    train(small_config(), run, progress=False, stop_after=13)  # records 5, 10; checkpoint 10
    (run / "metrics.jsonl.tmp").write_text('{"iteration": 5, "loss"')  # the trim's half
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"iteration": 15, "loss": 0.')  # a record cut short by the kill
    assert [r["iteration"] for r in read_metrics(run)] == [5, 10]
    train(None, run, resume=True, progress=False)
    assert [r["iteration"] for r in read_metrics(run)] == [5, 10, 15, 20]
    assert not (run / "metrics.jsonl.tmp").exists()
    assert same_weights(run, tmp_path / "whole")


def test_a_kill_inside_save_best_keeps_a_best_model(tmp_path):
    run = tmp_path / "run"
    train(small_config(iterations=5), run, progress=False)
    learner = mamlkit.load(run)
    checkpoint.save_best(run, learner, 5, -1.0)
    os.replace(run / "best", run / ".best.old")  # killed between the two renames
    checkpoint.save_best(run, learner, 5, -0.5)
    os.replace(run / "best", run / ".best.tmp")
    (run / "checkpoints" / ".step_00000010.tmp").mkdir()
    checkpoint.remove_partial(run)
    assert checkpoint.best(run) == (run / "best", 5) and checkpoint.best_value(run) == -0.5
    assert not (run / ".best.old").exists() and not (run / ".best.tmp").exists()
    assert not (run / "checkpoints" / ".step_00000010.tmp").exists()


# --- 6. OS errors on the run directory ---------------------------------------------------------

def test_out_pointing_at_a_file_or_below_one_is_one_sentence(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        assert main(["train", "sinusoid", "--out", str(out), "--no-progress", *sets()]) == 2
        assert str(out) in one_error_line(capsys)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_an_unwritable_folder_is_one_sentence(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o500)
    out = tmp_path / "ro" / "run"
    assert main(["train", "sinusoid", "--out", str(out), "--no-progress", *sets()]) == 2
    assert "Permission denied" in one_error_line(capsys)


def test_a_folder_without_permission_is_one_sentence(tmp_path, monkeypatch, capsys):
    """What a read-only parent gives a user who is not root (root may write anywhere)."""
    out = tmp_path / "ro" / "run"
    mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == out:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    assert main(["train", "sinusoid", "--out", str(out), "--no-progress", *sets()]) == 2
    assert one_error_line(capsys) == (f"mamlkit: error: cannot use {out}: "
                                      f"{os.strerror(errno.EACCES)}.")


def test_a_full_disk_is_one_sentence_and_the_run_can_go_on(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "save", full)
    assert main(["train", "sinusoid", "--out", str(run), "--no-progress", *sets()]) == 2
    assert one_error_line(capsys) == (f"mamlkit: error: cannot use {run}: "
                                      f"{os.strerror(errno.ENOSPC)}.")
    monkeypatch.undo()
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 0


# --- 7. provenance -----------------------------------------------------------------------------

def test_run_json_records_the_start_and_appends_each_resume(tmp_path):
    run = tmp_path / "run"
    train(small_config(), run, progress=False, stop_after=7)
    info = json.loads((run / "run.json").read_text())
    assert info["mamlkit"] == mamlkit.__version__ and info["torch"] == torch.__version__
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["numpy"] and info["host"] and info["command"] == sys.argv
    assert datetime.fromisoformat(info["started"]).utcoffset().total_seconds() == 0
    assert info["start_iteration"] == 0
    assert [(s["start_iteration"], s["started"]) for s in info["sessions"]] == [
        (0, info["started"])]
    git = info["git"]  # this checkout is a git repository holding the package
    assert git is None or (re.fullmatch(r"[0-9a-f]{40}", git["commit"])
                           and isinstance(git["dirty"], bool))
    train(None, run, resume=True, progress=False)
    again = json.loads((run / "run.json").read_text())
    assert {k: v for k, v in again.items() if k != "sessions"} == {
        k: v for k, v in info.items() if k != "sessions"}
    first, session = again["sessions"]
    assert first == info["sessions"][0]
    assert session["start_iteration"] == 5 and session["changed"] == {}
    assert session["command"] == sys.argv and session["started"] >= info["started"]


def test_git_state_outside_a_checkout_is_none(tmp_path):
    assert provenance.git_state(tmp_path) is None


def test_out_of_memory_is_one_sentence_and_the_directory_stays_usable(tmp_path, capsys,
                                                                       monkeypatch):
    from mamlkit.run import steps

    original = steps.SupervisedStep.update

    def no_memory(self, generator):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 99999999999 bytes.")

    monkeypatch.setattr(steps.SupervisedStep, "update", no_memory)
    run = tmp_path / "run"
    args = ["train", "sinusoid", "--out", str(run), "--set", "iterations=4", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory" in err and "Traceback" not in err
    monkeypatch.setattr(steps.SupervisedStep, "update", original)
    assert main(args) == 0  # the same command, once memory is there


def test_missing_simulators_are_one_sentence(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_mujoco(name, *args, **kwargs):
        if name == "mujoco":
            raise ImportError("No module named 'mujoco'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_mujoco)
    out = tmp_path / "cheetah"
    assert main(["train", "cheetah-vel-quick", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "needs gymnasium and mujoco" in err and "Traceback" not in err
    assert not out.exists()


def test_errors_of_the_python_api_name_its_arguments_beside_the_flags(tmp_path):
    """``train`` is called from Python too: a refusal names resume=True and run_dir as well as
    --resume and --out."""
    run = tmp_path / "run"
    train(small_config(iterations=5), run, progress=False)
    with pytest.raises(RunDirectoryError, match=r"pass --resume \(resume=True\) to continue it "
                                                r"or --out \(another run_dir\) for a new one\.$"):
        train(small_config(iterations=5), run, progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirectoryError, match=r"pass --out \(run_dir\) a folder"):
        train(small_config(), tmp_path / "file", progress=False)
    with pytest.raises(config_lib.ConfigError,
                       match=r"^--resume \(resume=True\) can change only .* with --out \(another "
                             r"run_dir\) for that\.$"):
        train(None, run, resume=True, progress=False, overrides={"seed": 5})
