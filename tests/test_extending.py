"""docs/extending.md's examples run: each module registers its component, the preset trains two
iterations through the one training loop, and the run loads and evaluates."""

import importlib
import re
import sys
from pathlib import Path

import pytest

from mamlkit import registry
from mamlkit.run import components, evaluate, loop
from mamlkit.run.config import applicable_keys, resolve
from mamlkit.run.load import load

GUIDE = Path(__file__).parent.parent / "docs" / "extending.md"
FAST = {"iterations": 2, "log_every": 1, "val_every": 2, "checkpoint_every": 2, "val_tasks": 4,
        "eval_tasks": 4}


def examples() -> dict[str, str]:
    """File name -> text of each fenced block of the guide that names a file."""
    blocks = re.findall(r"^```(?:python|yaml) (\S+)\n(.*?)^```$", GUIDE.read_text(), re.M | re.S)
    return dict(blocks)


def test_the_guide_holds_a_module_and_a_preset_of_each_kind():
    assert list(examples()) == ["boil.py", "sinusoid-boil.yaml", "line.py", "line.yaml",
                                "linear.py", "linear.yaml"]


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """Imports a module of the guide (it registers its component); forgets it afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = []

    def register(name: str):
        (tmp_path / f"{name}.py").write_text(examples()[f"{name}.py"])
        components.tasks(), components.learners()  # the package's own, found before the snapshot
        before = {**registry.LEARNERS, **registry.TASKS, **registry.ENVS}
        importlib.import_module(name)
        after = {**registry.LEARNERS, **registry.TASKS, **registry.ENVS}
        specs.extend(spec for key, spec in after.items() if before.get(key) is not spec)
        return specs[-1]

    yield register
    for spec in specs:
        registry.unregister(spec)
    for name in ("boil", "line", "linear"):
        sys.modules.pop(name, None)


def _train(tmp_path: Path, preset: str, **overrides) -> Path:
    (tmp_path / preset).write_text(examples()[preset])
    config = resolve(str(tmp_path / preset), {**FAST, **overrides})
    run = tmp_path / "run"
    loop.train(config, run, progress=False)
    return run


@pytest.mark.parametrize(("module", "preset", "overrides"), [
    ("boil", "sinusoid-boil.yaml", {"meta_batch_size": 4}),
    ("line", "line.yaml", {"meta_batch_size": 2, "trajectories": 2, "horizon": 5,
                           "eval_steps": [0, 1], "val_tasks": 2, "eval_tasks": 2}),
    ("linear", "linear.yaml", {}),
])
def test_each_example_trains_loads_and_evaluates(module, preset, overrides, tmp_path,
                                                 registered):
    spec = registered(module)
    assert spec.name in {**components.learners(), **components.tasks()}
    run = _train(tmp_path, preset, **overrides)
    learner = load(run)
    assert learner.iteration == 2
    result = evaluate.evaluate(learner)
    assert result["num_tasks"] == learner.config.eval_tasks
    assert result["metric"] == ("return" if module == "line" else "mse")
    if module == "boil":  # BOIL adapts the body only: the output layer is not in its inner loop
        assert learner.adapt_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert "adapt" not in applicable_keys(learner.config)


def test_a_key_of_another_component_is_refused_for_the_new_one(tmp_path, registered):
    registered("linear")
    (tmp_path / "linear.yaml").write_text(examples()["linear.yaml"])
    with pytest.raises(Exception, match=r"'ways' \(for tasks folder and omniglot\)"):
        resolve(str(tmp_path / "linear.yaml"), {"ways": 3})


def test_a_learner_dropped_into_the_package_trains_from_the_command_line(tmp_path):
    """Inside the package a learner is one file (and its preset): a copy of mamlkit with the
    guide's boil.py in algorithms/ and its preset in configs/, nothing else edited, trains
    ``mamlkit train sinusoid-boil`` in a fresh interpreter."""
    import shutil
    import subprocess

    import mamlkit

    copy = tmp_path / "site" / "mamlkit"
    shutil.copytree(Path(mamlkit.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "algorithms" / "boil.py").write_text(examples()["boil.py"])
    (copy / "configs" / "sinusoid-boil.yaml").write_text(examples()["sinusoid-boil.yaml"])
    overrides = [arg for key, value in {**FAST, "meta_batch_size": 4}.items()
                 for arg in ("--set", f"{key}={value}")]
    done = subprocess.run(
        [sys.executable, "-m", "mamlkit", "train", "sinusoid-boil", "--out",
         str(tmp_path / "run"), "--no-progress", *overrides],
        cwd=tmp_path, env={"PYTHONPATH": str(copy.parent), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "algorithm: boil" in (tmp_path / "run" / "config.yaml").read_text()
