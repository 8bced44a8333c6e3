"""The command line when its surroundings misbehave: a closed or full standard output, a Ctrl-C
while torch still loads, a run directory of another kind, data that moved, images too large for
memory, and evaluation files of the wrong shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mamlkit.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = ["--set", "iterations=20", "--set", "meta_batch_size=4", "--set", "log_every=5",
        "--set", "val_every=10", "--set", "val_tasks=5", "--set", "checkpoint_every=5"]


def mamlkit(*argv: str, cwd: Path, stdout=subprocess.PIPE, prelude: str = ""):
    """``mamlkit ARGV`` as the console script runs it (``from mamlkit.cli import main``), in a
    fresh process with this checkout's source first on the path."""
    code = f"{prelude}\nimport sys\nfrom mamlkit.cli import main\nsys.exit(main())"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=300)


@pytest.fixture
def run(tmp_path, capsys) -> Path:
    """A small trained sinusoid run."""
    path = tmp_path / "run"
    assert main(["train", "sinusoid", "--out", str(path), "--no-progress", *FAST]) == 0
    capsys.readouterr()
    return path


# --- item 1: a result is written before it is printed ------------------------------------------

@pytest.mark.parametrize("command", ["eval", "plot"])
def test_a_closed_stdout_loses_no_result_and_ends_quietly(run, tmp_path, command):
    """``mamlkit eval RUN | head -1``: the reader is gone before the first line. The file is
    written all the same, and the command ends as ``seq``, ``cat`` and other Unix tools do when
    SIGPIPE ends them: no message, status 141 (128 + SIGPIPE, like 130 for Ctrl-C), which a
    shell without ``pipefail`` ignores and a script with it sees as a broken pipe."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before anything is printed
    try:
        extra = ["--tasks", "20", "--no-progress"] if command == "eval" else []
        done = mamlkit(command, str(run), *extra, cwd=tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")
    if command == "eval":
        assert json.loads((run / "eval.json").read_text())["num_tasks"] == 20
    else:
        assert (run / "learning_curve.png").is_file() and (run / "adaptation.png").is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_stdout_is_one_sentence_after_the_result_is_written(run, tmp_path):
    with open("/dev/full", "w") as full:
        done = mamlkit("eval", str(run), "--tasks", "20", "--no-progress", cwd=tmp_path,
                       stdout=full)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("mamlkit: error: could not print to standard output (No space")
    assert json.loads((run / "eval.json").read_text())["num_tasks"] == 20


def test_eval_into_a_read_only_run_still_prints_its_table(run, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("mamlkit.run.evaluate.write", read_only)
    assert main(["eval", str(run), "--tasks", "20", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "MSE on 20 held-out tasks" in captured.out
    assert "could not write the evaluation" in captured.err and "table above" in captured.err


# --- item 9: Ctrl-C while torch loads ----------------------------------------------------------

def test_the_command_line_module_loads_without_torch(tmp_path):
    """The console script imports ``mamlkit.cli`` before ``main`` runs: nothing heavy may load
    there, or a Ctrl-C in the first seconds escapes every handler."""
    done = subprocess.run([sys.executable, "-c", "import sys, mamlkit.cli; "
                           "print('torch' in sys.modules)"], cwd=tmp_path, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": SRC})
    assert done.stdout.strip() == "False", done.stderr


# Raises KeyboardInterrupt where ``import torch`` starts, as a Ctrl-C in the first seconds does.
_CTRL_C_IN_IMPORT_TORCH = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
"""


@pytest.mark.parametrize("argv", [["--version"], ["eval", "somewhere"], ["train", "sinusoid"]])
def test_ctrl_c_while_torch_loads_is_one_line(tmp_path, argv):
    done = mamlkit(*argv, cwd=tmp_path, prelude=_CTRL_C_IN_IMPORT_TORCH)
    assert (done.returncode, done.stderr) == (130, "mamlkit: interrupted\n")
