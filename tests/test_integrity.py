"""A run directory read back is verified, never trusted: checksummed checkpoints that fall back
to the one before, a saved config validated like user input and matched against the config its
checkpoint was trained with, metrics lines of the wrong type skipped, and write errors while
saving a checkpoint that leave the run resumable."""

import json
import random
import shutil

import pytest
from test_rundir import same_weights, small_config

from mamlkit.cli import main
from mamlkit.run import metrics as metrics_lib
from mamlkit.run import plots
from mamlkit.run.compare import Group
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


