"""The command line when its surroundings misbehave: a closed or full standard output, a Ctrl-C
while torch still loads, a run directory of another kind, data that moved, images too large for
memory, and evaluation files of the wrong shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import one_error_line

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

@pytest.mark.slow
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


@pytest.mark.slow
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


# --- item 8: a run directory of another kind, data that moved, a NaN stop, a bad eval.json ----



def test_resume_under_a_preset_of_another_task_is_refused(run, tmp_path, capsys):
    """``--resume`` trains what config.yaml says; a CONFIG naming another task means the
    wrong directory (or the wrong preset), so nothing runs. Other keys may differ: the first
    command's --set (an algorithm too) need not be repeated."""
    (tmp_path / "mine.yaml").write_text("base: nav2d\n")
    for config, label in [("nav2d", "preset 'nav2d'"), (str(tmp_path / "mine.yaml"),
                                                         f"config file '{tmp_path}/mine.yaml'")]:
        assert main(["train", config, "--out", str(run), "--resume", "--no-progress",
                     "--set", "iterations=25"]) == 2
        assert one_error_line(capsys) == (
            f"mamlkit: error: {run} holds a run of task sinusoid, but {label} trains task "
            f"nav2d; resume it with its own preset or config file, or train {config} into a "
            "new --out.")
    assert len(json.loads((run / "run.json").read_text())["sessions"]) == 1  # the first
    assert main(["train", "sinusoid", "--out", str(run), "--resume", "--no-progress",
                 "--set", "iterations=25"]) == 0
    assert main(["train", "sinusoid-paper", "--out", str(run), "--resume", "--no-progress",
                 "--set", "iterations=30"]) == 0


def test_a_relative_data_root_is_stored_absolute_and_eval_and_plot_take_a_new_one(
        tmp_path, monkeypatch, capsys):
    from test_own_data import TINY, colour_folder

    from mamlkit.run import config as config_lib

    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    colour_folder(tmp_path / "images", classes=30, per_class=4)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "folder-5w1s", "--data-root", "images", "--out", "run",
                 "--set", "image_size=8", "--set", "query_shots=2", *TINY]) == 0
    run = tmp_path / "run"
    assert config_lib.load(run / "config.yaml").data_root == str(tmp_path / "images")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["eval", str(run)]) == 0
    # the dataset moves: eval says where to point, and --data-root points there
    (tmp_path / "images").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    assert "--data-root" in one_error_line(capsys)
    assert main(["eval", str(run), "--data-root", "../moved"]) == 0
    assert main(["plot", str(run), "--data-root", "../moved"]) == 0
    assert (run / "adaptation.png").is_file()
    assert config_lib.load(run / "config.yaml").data_root == str(tmp_path / "images")


def test_the_advice_after_a_nan_is_a_resume_that_works(tmp_path, capsys):
    """The NaN stop names the key to lower and the command; --resume takes it, records it, and
    the optimizer steps with it from the checkpoint on."""
    from safetensors.torch import load_file

    from mamlkit.run import checkpoint
    from mamlkit.run import config as config_lib

    run = tmp_path / "run"
    args = ["train", "sinusoid", "--out", str(run), "--no-progress", *FAST]
    assert main([*args, "--set", "iterations=10"]) == 0
    # a step size that blows the weights up after the checkpoint at 10
    assert main([*args, "--resume", "--set", "meta_lr=1e30"]) == 2
    advice = one_error_line(capsys)
    assert "(the last good checkpoint is" in advice and "step_00000010" in advice
    assert "--resume --set meta_lr=<lower than 1e+30>" in advice
    assert main([*args, "--resume", "--set", "meta_lr=0.0005"]) == 0
    assert config_lib.load(run / "config.yaml").meta_lr == 0.0005
    sessions = json.loads((run / "run.json").read_text())["sessions"]
    assert [s["changed"] for s in sessions] == [{}, {"iterations": 20, "meta_lr": 1e30},
                                                {"meta_lr": 0.0005}]
    state = json.loads((checkpoint.latest(run) / "state.json").read_text())
    assert [group["lr"] for group in state["param_groups"]] == [0.0005]
    weights = load_file(checkpoint.latest(run) / "model.safetensors")
    assert all(w.isfinite().all() for w in weights.values())


def test_the_advice_after_a_nan_names_max_kl_where_trpo_takes_the_outer_step(tmp_path):
    from mamlkit.run.config import resolve
    from mamlkit.run.loop import _diverged
    from mamlkit.run.rundir import RESUMABLE

    advice = str(_diverged(tmp_path, float("nan"), 3, resolve("nav2d", {})))
    assert "(no checkpoint yet)" in advice and "--resume --set max_kl=<lower than 0.01>" in advice
    assert "max_kl" in RESUMABLE


@pytest.mark.parametrize("damage", [
    {"steps": "0.5"}, {"steps": {"0": "0.5"}}, {"steps": {"0": {"mean": "x", "ci95": 0.1}}},
    {"metric": 3}, {"num_tasks": "many"}, {"per_task": {"0": "1,2"}},
    {"baselines": {"head": {"metric": "accuracy", "steps": {"1": {"mean": None}}}}},
    {"random_policy": [1, 2]},
])
def test_compare_of_an_eval_json_of_wrong_types_is_one_sentence(tmp_path, capsys, damage):
    from mamlkit.run import config as config_lib

    good = {"metric": "mse", "num_tasks": 2, "iteration": 20,
            "steps": {"0": {"mean": 1.0, "ci95": 0.1}}, "per_task": {"0": [1.0, 1.0]}}
    for name, result in {"good": good, "bad": {**good, **damage}}.items():
        (tmp_path / name).mkdir()
        config_lib.save(config_lib.resolve("sinusoid", {"seed": len(name)}),
                        tmp_path / name / "config.yaml")
        (tmp_path / name / "eval.json").write_text(json.dumps(result))
    for argv in (["compare", str(tmp_path / "good"), str(tmp_path / "bad")],
                 ["compare", "--paired", str(tmp_path / "good"), str(tmp_path / "bad")]):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert f"{tmp_path / 'bad' / 'eval.json'} is not an evaluation" in line


# --- item 9: images too large for memory -------------------------------------------------------

def test_a_folder_too_large_for_memory_is_refused_before_decoding(tmp_path, monkeypatch, capsys):
    """120 RGB images at 100x100 are 3.6 MB decoded (twice that while they are stacked): with
    1 MB available that is one sentence naming image_size, before any image is decoded or
    anything written; at 8x8 (23 kB) the same folder trains."""
    from test_own_data import TINY, colour_folder

    from mamlkit.data import folder

    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    data = colour_folder(tmp_path / "images", classes=30, per_class=4)
    decoded, decode = [], folder.decode_image

    def counted(*args, **kwargs):
        decoded.append(1)
        return decode(*args, **kwargs)

    monkeypatch.setattr(folder, "decode_image", counted)
    monkeypatch.setattr(folder, "available_memory", lambda: 1_000_000, raising=False)
    argv = ["train", "folder-5w1s", "--data-root", str(data), "--set", "query_shots=2", *TINY]
    assert main([*argv, "--out", str(tmp_path / "big"), "--set", "image_size=100"]) == 2
    line = one_error_line(capsys)
    assert "120 images" in line and "7.2 MB" in line and "lower image_size" in line
    assert not decoded and not (tmp_path / "big").exists()
    assert main([*argv, "--out", str(tmp_path / "small"), "--set", "image_size=8"]) == 0


def test_available_memory_reads_memavailable_and_says_none_where_it_cannot(tmp_path):
    from mamlkit.data.folder import available_memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683784 kB\nMemFree:  1 kB\n"
                       "MemAvailable:   22847476 kB\n")
    assert available_memory(meminfo) == 22847476 * 1024
    meminfo.write_text("MemTotal:       24683784 kB\n")  # a kernel before 3.14
    assert available_memory(meminfo) is None
    assert available_memory(tmp_path / "absent") is None  # not Linux
