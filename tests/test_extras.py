"""Lean installs: ``pip install mamlkit`` without its extras trains, evaluates and plots the
supervised tasks; what needs an extra (RL, TensorBoard, W&B) stops with one sentence naming the
``pip install`` to run. A missing package is simulated with ``sys.modules[name] = None`` in a
fresh interpreter, which makes every ``import name`` fail as if it were not installed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

RL = ("gymnasium", "mujoco")
TRACKERS = ("tensorboard", "wandb")
SMALL = ["--set", "iterations=4", "--set", "meta_batch_size=2", "--set", "log_every=2",
         "--set", "val_every=4", "--set", "val_tasks=2", "--set", "checkpoint_every=4",
         "--set", "eval_tasks=4", "--no-progress"]


def without(missing: tuple[str, ...], *commands: list[str], cwd: Path):
    """Run mamlkit ``commands`` in one fresh interpreter where ``missing`` cannot be imported;
    stops at the first command that fails. Its stdout, stderr and exit status."""
    code = (
        "import sys\n"
        f"for name in {missing!r}:\n"
        "    sys.modules[name] = None\n"
        "from mamlkit.cli import main\n"
        f"for argv in {list(commands)!r}:\n"
        "    status = main(argv)\n"
        "    if status:\n"
        "        sys.exit(status)\n"
        f"print('loaded', sorted(m for m in {missing!r} if sys.modules.get(m) is not None))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.slow
def test_the_main_job_needs_neither_rl_nor_trackers(tmp_path):
    """README's quick start, train then eval then plot, with no gymnasium, MuJoCo, TensorBoard
    or W&B: the default loggers are then metrics.jsonl alone, and nothing warns."""
    done = without((*RL, *TRACKERS), ["train", "sinusoid", "--out", "run", *SMALL],
                   ["eval", "run", "--no-progress"], ["plot", "run"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "loaded []" in done.stdout
    assert "warning" not in done.stderr
    run = tmp_path / "run"
    assert [json.loads(line)["iteration"] for line in
            (run / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    assert "loggers: [jsonl]" in (run / "config.yaml").read_text()
    assert not (run / "tensorboard").exists()
    assert (run / "eval.json").is_file() and list(run.glob("*.png"))


@pytest.mark.slow
def test_an_rl_preset_without_the_rl_extra_says_what_to_install(tmp_path):
    for missing in (("gymnasium",), ("mujoco",)):
        done = without(missing, ["train", "cheetah-vel-quick", "--out", "run"], cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr == ("mamlkit: error: The RL presets need the rl extra: "
                               "pip install 'mamlkit[rl]'.\n")
    done = without(("gymnasium",), ["train", "nav2d", "--out", "run"], cwd=tmp_path)
    assert done.stderr.endswith("pip install 'mamlkit[rl]'.\n"), done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("logger", TRACKERS)
def test_a_logger_without_its_package_says_what_to_install(tmp_path, logger):
    done = without((logger,), ["train", "sinusoid", "--out", "run", "--set",
                               f"loggers=[jsonl,{logger}]"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (f"mamlkit: error: Config key 'loggers' names {logger}, which needs "
                           f"the {logger} extra: pip install 'mamlkit[{logger}]' (or leave "
                           f"{logger} out of loggers).\n")
    assert not (tmp_path / "run").exists()


def test_supervised_modules_import_without_gymnasium_or_mujoco():
    """The supervised path reaches the RL modules (tasks, the loop's steps) but needs none of
    their simulators to import them."""
    code = ("import sys\nsys.modules['gymnasium'] = sys.modules['mujoco'] = None\n"
            "import mamlkit.tasks, mamlkit.envs, mamlkit.run.loop, mamlkit.run.evaluate\n"
            "import mamlkit.run.plots, mamlkit.run.load\n"
            "try:\n    mamlkit.envs.Navigation2D\nexcept ModuleNotFoundError as error:\n"
            "    print(error.name, error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the gymnasium environment itself fails only when used, with what to install
    assert done.stdout.strip() == ("gymnasium Navigation2D is a gymnasium environment: pip "
                                   "install 'mamlkit[rl]'.")
