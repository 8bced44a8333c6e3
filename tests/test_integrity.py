"""A run directory read back is verified, never trusted: checksummed checkpoints that fall back
to the one before, a saved config validated like user input and matched against the config its
checkpoint was trained with, metrics lines of the wrong type skipped, and write errors while
saving a checkpoint that leave the run resumable."""

import errno
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest
from test_run_rundir import same_weights, sets, small_config

import mamlkit
from mamlkit.cli import main
from mamlkit.run import checkpoint, plots
from mamlkit.run import metrics as metrics_lib
from mamlkit.run.compare import Group
from mamlkit.run.errors import RunDirectoryError
from mamlkit.run.loop import train
from mamlkit.run.metrics import read_metrics

try:
    import resource
except ImportError:  # Windows
    resource = None

STEP_5, STEP_10 = "step_00000005", "step_00000010"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run of 20 iterations, and the same run killed at 13 (checkpoints 5 and 10)."""
    root = tmp_path_factory.mktemp("runs")
    train(small_config(), root / "whole", progress=False)
    train(small_config(), root / "killed", progress=False, stop_after=13)
    return root


@pytest.fixture
def run(runs, tmp_path):
    """A copy of the killed run that a test may damage."""
    return shutil.copytree(runs / "killed", tmp_path / "run")


def _warnings(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("mamlkit: warning: ")]


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("mamlkit: error: ")
    return lines[0]


def _damage_tensors(path, how: str) -> None:
    """Overwrite 64 bytes inside the tensor data of a safetensors file (its header stays)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    middle = start + (len(data) - start) // 2
    filler = bytes(64) if how == "zeroed" else random.Random(0).randbytes(64)
    data[middle:middle + 64] = filler
    path.write_bytes(bytes(data))


def _edit_state(path, key: str, value) -> None:
    state = json.loads((path / "state.json").read_text())
    state[key] = value
    (path / "state.json").write_text(json.dumps(state))


def _damage(last, damage: str) -> None:
    if damage in ("zeroed", "random"):
        _damage_tensors(last / "model.safetensors", damage)
    elif damage == "optimizer-bytes":
        _damage_tensors(last / "optimizer.safetensors", "random")
    elif damage == "task_rng":
        _edit_state(last, "task_rng", "not base64 at all!")
    elif damage == "param_groups":
        _edit_state(last, "param_groups", [])
    else:
        _edit_state(last, "iteration", 12)


# --- checksummed checkpoints that fall back to the one before ---------------------------------

def test_every_file_of_a_checkpoint_has_its_sha256_recorded(run):
    for path in checkpoint.kept(run):
        lines = (path / "SHA256SUMS").read_text().splitlines()
        recorded = {name: digest for digest, name in (line.split("  ", 1) for line in lines)}
        files = {p.name for p in path.iterdir()} - {"SHA256SUMS"}
        assert set(recorded) == files >= {"model.safetensors", "optimizer.safetensors",
                                          "state.json", "config.yaml"}
        for name, digest in recorded.items():
            assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("damage", ["zeroed", "random", "optimizer-bytes", "task_rng",
                                    "param_groups", "iteration"])
def test_resume_falls_back_from_damaged_bytes_or_values(runs, run, capsys, damage):
    _damage(run / "checkpoints" / STEP_10, damage)
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 0
    (warning,) = _warnings(capsys.readouterr().err)
    assert f"damaged checkpoint {STEP_10}" in warning, warning
    assert warning.endswith(f"resuming from {STEP_5}.")
    assert same_weights(run, runs / "whole")
    assert [r["iteration"] for r in read_metrics(run)] == [5, 10, 15, 20]


@pytest.mark.parametrize("damage", ["task_rng", "param_groups", "iteration"])
def test_a_checkpoint_without_checksums_is_still_parse_checked(runs, run, capsys, damage):
    """Checkpoints written before checksums were recorded load unverified but parse-checked."""
    for path in checkpoint.kept(run):
        (path / "SHA256SUMS").unlink(missing_ok=True)
        (path / "config.yaml").unlink(missing_ok=True)
    _damage(run / "checkpoints" / STEP_10, damage)
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 0
    (warning,) = _warnings(capsys.readouterr().err)
    assert f"damaged checkpoint {STEP_10}" in warning and warning.endswith(f"from {STEP_5}.")
    assert same_weights(run, runs / "whole")


def test_a_checkpoint_without_checksums_still_loads_and_resumes(runs, run, capsys):
    for path in checkpoint.kept(run):
        (path / "SHA256SUMS").unlink(missing_ok=True)
        (path / "config.yaml").unlink(missing_ok=True)
    assert mamlkit.load(run).checkpoint == f"latest ({STEP_10})"
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert _warnings(capsys.readouterr().err) == []
    assert same_weights(run, runs / "whole")


def test_load_eval_and_plot_fall_back_from_a_damaged_checkpoint(run, tmp_path, capsys):
    _damage_tensors(run / "checkpoints" / STEP_10 / "model.safetensors", "zeroed")
    learner = mamlkit.load(run)
    assert (learner.checkpoint, learner.iteration) == (f"latest ({STEP_5})", 5)
    (warning,) = _warnings(capsys.readouterr().err)
    assert f"damaged checkpoint {STEP_10} (model.safetensors:" in warning
    assert warning.endswith(f"using {STEP_5}.")
    assert main(["eval", str(run), "--tasks", "5", "--no-progress"]) == 0
    assert len(_warnings(capsys.readouterr().err)) == 1
    assert json.loads((run / "eval.json").read_text())["iteration"] == 5
    assert main(["plot", str(run), "--out", str(tmp_path / "figures")]) == 0
    assert len(_warnings(capsys.readouterr().err)) == 1


@pytest.mark.parametrize("pointer", [b"garbage", b"\x00\xff\xfe", b"step_00000099"])
def test_a_garbled_latest_pointer_falls_back_to_the_newest_valid_checkpoint(run, capsys,
                                                                            pointer):
    (run / "checkpoints" / "latest").write_bytes(pointer)
    learner = mamlkit.load(run)
    assert (learner.checkpoint, learner.iteration) == (f"latest ({STEP_10})", 10)
    assert main(["eval", str(run), "--tasks", "5", "--no-progress"]) == 0
    assert json.loads((run / "eval.json").read_text())["iteration"] == 10


def test_load_without_a_usable_checkpoint_is_one_sentence(run):
    for path in checkpoint.kept(run):
        _damage_tensors(path / "model.safetensors", "zeroed")
    with pytest.raises(RunDirectoryError, match=r"^No usable checkpoint in .*: step_00000010 \("):
        mamlkit.load(run)


# --- a run's config.yaml checked like user input and against its checkpoint's copy -------------

def test_a_truncated_config_yaml_is_refused_and_kept_as_it_is(run, capsys):
    lines = (run / "config.yaml").read_text().splitlines(keepends=True)
    truncated = "".join(lines[:len(lines) // 2])
    (run / "config.yaml").write_text(truncated)
    argv = ["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]
    assert main([*argv, "--set", "iterations=30"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{run / 'config.yaml'} differs from the config {STEP_10} was trained with" in line
    assert (run / "config.yaml").read_text() == truncated  # not replaced by defaults
    assert main(["eval", str(run), "--tasks", "5", "--no-progress"]) == 2
    assert "differs from the config" in _error_line(capsys.readouterr().err)
    with pytest.raises(RunDirectoryError, match="differs from the config"):
        mamlkit.load(run)


@pytest.mark.parametrize("edit", [("meta_batch_size: 4", "meta_batch_size: 0"),
                                  ("hidden: [40, 40]", "hidden: [41, 40]")])
@pytest.mark.parametrize("copy", [True, False], ids=["checkpoint-copy", "old-checkpoints"])
def test_a_bad_value_in_config_yaml_is_one_sentence_everywhere(run, tmp_path, capsys, edit,
                                                               copy):
    if not copy:
        for path in checkpoint.kept(run):
            (path / "SHA256SUMS").unlink(missing_ok=True)
            (path / "config.yaml").unlink(missing_ok=True)
    text = (run / "config.yaml").read_text()
    assert edit[0] in text
    (run / "config.yaml").write_text(text.replace(*edit))
    key = edit[0].split(":")[0]
    if key == "hidden" and not copy:  # valid values, but weights of another shape
        key = "does not fit the model that config.yaml describes (model.0.weight is [40, 1]"
    for argv in (["eval", str(run), "--tasks", "5", "--no-progress"],
                 ["plot", str(run), "--out", str(tmp_path / "figures")],
                 ["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]):
        assert main(argv) == 2
        assert key in _error_line(capsys.readouterr().err)
    with pytest.raises(RunDirectoryError, match=re.escape(key)):
        mamlkit.load(run)


def test_a_config_yaml_edit_of_a_key_a_resume_may_change_is_accepted(run, capsys):
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("eval_tasks: 600", "eval_tasks: 7"))
    assert mamlkit.load(run).config.eval_tasks == 7
    assert _warnings(capsys.readouterr().err) == []


# --- metrics.jsonl lines of the wrong type ---------------------------------------------------

def test_metrics_lines_that_are_not_records_are_skipped_with_one_warning(runs, run, capsys,
                                                                         monkeypatch):
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write('42\n[1, 2]\n{"iteration": "x"}\n{"iteration": 7, "loss": "low"}\n'
                      '"text"\n{"iteration": true}\nnull\n')
    assert [r["iteration"] for r in read_metrics(run)] == [5, 10]
    for key in ("loss", "val_post"):  # a plot reads the file for each curve: one warning
        x, _, _ = plots.group_series(Group("run", {"run": run}), key)
        assert x == ([5, 10] if key == "loss" else [10])
    (warning,) = _warnings(capsys.readouterr().err)
    assert f"skipped 7 lines of {run / 'metrics.jsonl'}" in warning
    assert warning.endswith("(the first, line 3: 42).")
    monkeypatch.setattr(metrics_lib, "_warned", set())  # as a new command would
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert len(_warnings(capsys.readouterr().err)) == 1
    assert [r["iteration"] for r in read_metrics(run)] == [5, 10, 15, 20]
    assert same_weights(run, runs / "whole")
    read_metrics(run)
    assert _warnings(capsys.readouterr().err) == []  # the resume dropped them


def test_a_line_cut_short_by_a_kill_is_skipped_without_a_warning(run, capsys):
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"iteration": 15, "loss": 0.')
    assert [r["iteration"] for r in read_metrics(run)] == [5, 10]
    assert _warnings(capsys.readouterr().err) == []


# --- write errors while saving a checkpoint -------------------------------------------------

_LIMITED = """
import resource, sys
from mamlkit.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file-size limits here")
def test_a_file_size_limit_while_saving_is_one_sentence_and_the_run_resumes(tmp_path):
    """The optimizer file (about 2 x 170 kB for 200 x 200 weights) passes no limit of 250 kB."""
    extra = {"hidden": "[200,200]", "iterations": 20}
    run = tmp_path / "run"
    cli = [sys.executable, "-c", _LIMITED]
    train(small_config(hidden=[200, 200]), tmp_path / "whole", progress=False)
    first = ["train", "sinusoid", "--out", str(run), "--no-progress",
             *sets(**{**extra, "iterations": 10})]
    assert main(first) == 0
    again = ["train", "sinusoid", "--out", str(run), "--no-progress", "--resume", "--set",
             "iterations=20"]
    limited = subprocess.run([*cli, str(250_000), *again], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300)
    assert limited.returncode == 2, limited.stderr
    line = _error_line(limited.stderr)
    assert "step_00000015" in line and "(File too large); raise the file-size limit" in line
    assert line.endswith("then --resume (resume=True) goes on from step_00000010.")
    assert checkpoint.latest(run).name == STEP_10
    assert {p.name for p in (run / "checkpoints").iterdir()} == {STEP_5, STEP_10, "latest"}
    assert main(again) == 0
    assert same_weights(run, tmp_path / "whole")


class _FullDisk:
    """A file whose first write stops half-way with ENOSPC, as on a disk that fills up."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()

    def write(self, data: bytes) -> None:
        self.stream.write(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_saving_leaves_the_checkpoints_before_as_they_were(runs, run, capsys,
                                                                             monkeypatch):
    """ENOSPC half-way through the optimizer file of checkpoint 15 (the disk fills there)."""
    real_open = open

    def filling(path, mode="r", *args, **kwargs):
        stream = real_open(path, mode, *args, **kwargs)
        return _FullDisk(stream) if str(path).endswith("optimizer.safetensors") else stream

    monkeypatch.setattr(checkpoint, "open", filling, raising=False)
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line == (f"mamlkit: error: Could not write checkpoint step_00000015 into "
                    f"{run / 'checkpoints'} ({os.strerror(errno.ENOSPC)}); free disk space, "
                    f"then --resume (resume=True) goes on from {STEP_10}.")
    assert {p.name for p in (run / "checkpoints").iterdir()} == {STEP_5, STEP_10, "latest"}
    monkeypatch.undo()
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert same_weights(run, runs / "whole")
