"""The architecture holds: imports point downward only (DESIGN.md's layers), read from the import
statements of every module; the lazy package root loads nothing heavy, and each layer leaves the
heavy modules it does not need (MuJoCo, TensorBoard, plots, images) for first use."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from package_files import imported_from, lazy_exports, module_name, write_files

import mamlkit

PACKAGE = Path(mamlkit.__file__).parent
# DESIGN.md's layers, bottom up; data/ and envs/ are sources side by side (neither imports the
# other). The command line and the package root sit on top; the registry, where components of
# every layer register, imports nothing of the package.
LAYERS = {"registry": 0, "functional": 1, "models": 2, "data": 3, "envs": 3, "rl": 4, "tasks": 5,
          "algorithms": 6, "run": 7, "cli": 8, "__init__": 8, "__main__": 9}


def _layer(module: str) -> str:
    """``mamlkit.run.loop`` -> ``run``; ``mamlkit`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _root_attribute(name: str, package_dir: Path, lazy: dict[str, str]) -> list[str]:
    """What ``mamlkit.<name>`` loads: a lazy export's module, a sub-package, or the root itself
    for its dunders (``__version__``, ``__file__``); ``*`` loads every lazy export."""
    root = package_dir.name
    if name == "*":
        return sorted(set(lazy.values()))
    if name in lazy:
        return [lazy[name]]
    if name.startswith("__") and name.endswith("__"):
        return [root]
    return [f"{root}.{name}"]


def imported_modules(path: Path, package_dir: Path, lazy: dict[str, str]) -> list[str]:
    """Every module of the package that ``path`` loads through an import statement, at any depth
    (function-local included); a name taken from the root counts as what it resolves to."""
    root = package_dir.name
    module = module_name(path, package_dir)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found: list[str] = []
    bound_to_root = set()  # local names that hold the root module: import mamlkit[.x] [as mk]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == root or alias.name.startswith(f"{root}."):
                    found.append(alias.name)
                    if alias.asname is None or alias.name == root:
                        bound_to_root.add(alias.asname or root)
        elif isinstance(node, ast.ImportFrom):
            name = imported_from(node, package)
            if name == root:
                found += [m for a in node.names for m in _root_attribute(a.name, package_dir, lazy)]
            elif name.startswith(f"{root}."):
                found.append(name)
    for node in ast.walk(tree):  # mamlkit.MAML after import mamlkit: the lazy root loads it
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in bound_to_root):
            found += _root_attribute(node.attr, package_dir, lazy)
    return found


def layering_violations(package_dir: Path) -> list[str]:
    """Every import of a module above (or beside, in another package of the same layer) the
    importing module's own layer; importing the root itself is allowed (it loads nothing)."""
    lazy = lazy_exports(package_dir)
    root = package_dir.name
    wrong = []
    for path in sorted(package_dir.rglob("*.py")):
        shown = path.relative_to(package_dir)
        own = _layer(".".join((root, *shown.with_suffix("").parts)))
        if own not in LAYERS:
            wrong.append(f"{shown} is in no layer of DESIGN.md")
            continue
        for imported in imported_modules(path, package_dir, lazy):
            if imported == root:
                continue
            other = _layer(imported)
            if LAYERS.get(other, 99) > LAYERS[own] or (LAYERS.get(other) == LAYERS[own]
                                                       and other != own):
                wrong.append(f"{shown} imports {imported}")
    return wrong


def test_no_module_imports_a_layer_above_its_own():
    assert not layering_violations(PACKAGE), (
        "imports against the layering:\n" + "\n".join(layering_violations(PACKAGE)))


def test_the_check_reads_every_layer_of_the_real_package():
    """Not vacuous: every layer has modules, and known imports are seen (through the root too)."""
    layers = {_layer(".".join(("mamlkit", *p.relative_to(PACKAGE).with_suffix("").parts)))
              for p in PACKAGE.rglob("*.py")}
    assert layers == set(LAYERS)
    lazy = lazy_exports(PACKAGE)
    assert lazy["MAML"] == "mamlkit.algorithms" and lazy["load"] == "mamlkit.run.load"
    maml = imported_modules(PACKAGE / "algorithms" / "maml.py", PACKAGE, lazy)
    assert "mamlkit.functional" in maml  # from mamlkit import functional as MF


def test_the_check_catches_imports_that_break_the_rule(tmp_path):
    """A package shaped like mamlkit, whose lower layers reach up directly, relatively, through
    the lazy root (``from mamlkit import MAML``, ``mamlkit.load``) and sideways."""
    package = write_files(tmp_path / "mamlkit", {
        "__init__.py": '_LAZY = {"MAML": "mamlkit.algorithms", "load": "mamlkit.run.load"}\n',
        "functional/__init__.py": "from mamlkit import __version__\n",
        "functional/lazy.py": "from mamlkit import MAML\n",
        "functional/local.py": "def f():\n    from ..run.loop import train\n",
        "functional/star.py": "from mamlkit import *\n",
        "models/root.py": "import mamlkit\n\ndef f():\n    return mamlkit.load\n",
        "models/alias.py": "import mamlkit as mk\nimport mamlkit.functional\nx = mk.tasks\n",
        "models/fine.py": "import mamlkit\nfrom mamlkit import functional\nfrom . import root\n"
                          "v = mamlkit.__version__\n",
        "data/sideways.py": "from mamlkit.envs import navigation\n",
        "envs/navigation.py": "import gymnasium\n",
        "run/loop.py": "from mamlkit import MAML, load\nimport mamlkit.cli\n",
        "cli.py": "from mamlkit.run.loop import train\n",
        "extra/thing.py": "",
    })
    assert layering_violations(package) == [
        "data/sideways.py imports mamlkit.envs",
        "extra/thing.py is in no layer of DESIGN.md",
        "functional/lazy.py imports mamlkit.algorithms",
        "functional/local.py imports mamlkit.run.loop",
        "functional/star.py imports mamlkit.algorithms",
        "functional/star.py imports mamlkit.run.load",
        "models/alias.py imports mamlkit.tasks",
        "models/root.py imports mamlkit.run.load",
        "run/loop.py imports mamlkit.cli",
    ]


def test_the_check_needs_the_roots_lazy_table(tmp_path):
    package = write_files(tmp_path / "mamlkit", {"__init__.py": "NAMES = {}\n"})
    with pytest.raises(AssertionError, match="no _LAZY table"):
        layering_violations(package)


# Heavy third-party modules that `import torch` does not load (checked below), so that finding
# them absent says something about mamlkit.
HEAVY = ("PIL", "gymnasium", "mujoco", "matplotlib", "tensorboard", "wandb", "yaml",
         "safetensors")
# One interpreter imports these in order (torch once, not once per check). What a step may not
# load shrinks from step to step, so a module found after a step was loaded by that step: the
# earlier steps were checked not to load it.
STEPS = {
    "root": "import mamlkit",
    "torch": "import torch",
    "functional": "import mamlkit.functional",
    "learners": "from mamlkit import MAML",
    "cli": "import mamlkit.cli",
    "training": "import mamlkit.envs\nfrom mamlkit import load\nimport mamlkit.run.loop",
    "plots and mujoco": "import mamlkit.run.plots\nimport mamlkit.envs.half_cheetah",
}


def loaded_after_each(steps: dict[str, str]) -> dict[str, tuple[set[str], set[str]]]:
    """Step name -> (heavy modules and torch, mamlkit modules) in ``sys.modules`` after it, the
    steps run in order in a fresh interpreter."""
    watched = (*HEAVY, "torch")
    code = "import sys\n" + "".join(
        f"{statement}\nprint(sorted(m for m in {watched!r} if m in sys.modules))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mamlkit'))\n"
        for statement in steps.values())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(out) == 2 * len(steps), out
    return {name: (set(ast.literal_eval(out[2 * i])), set(ast.literal_eval(out[2 * i + 1])))
            for i, name in enumerate(steps)}


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[set[str], set[str]]]:
    return loaded_after_each(STEPS)


def test_the_heavy_check_sees_modules_that_are_loaded(loaded):
    heavy, mine = loaded["plots and mujoco"]
    assert {"matplotlib", "mujoco", "gymnasium", "torch"} <= heavy
    assert "mamlkit.run.plots" in mine


def test_torch_loads_none_of_the_heavy_modules_checked(loaded):
    """Otherwise the checks below could not fail for that module."""
    heavy, _ = loaded["torch"]
    assert heavy == {"torch"}, f"import torch loads {sorted(heavy)}: drop them from HEAVY"


def test_importing_the_package_root_loads_nothing_heavy(loaded):
    """The root's names load on first use: ``import mamlkit`` does not even load torch."""
    assert loaded["root"] == (set(), {"mamlkit"})


def test_importing_the_functional_core_loads_torch_only(loaded):
    """``import mamlkit.functional`` pulls in no data loading, images, environments or plots."""
    heavy, mine = loaded["functional"]
    assert heavy == {"torch"}, f"importing mamlkit.functional loaded {sorted(heavy)}"
    assert all(m == "mamlkit" or m.startswith("mamlkit.functional") for m in mine), mine
    assert "mamlkit.functional.adapt" in mine


def test_learners_and_the_command_line_leave_simulators_plots_and_images_for_first_use(loaded):
    for step in ("learners", "cli"):
        heavy, _ = loaded[step]
        assert not heavy & {"PIL", "gymnasium", "mujoco", "matplotlib", "tensorboard"}, step


def test_training_and_loading_leave_mujoco_trackers_and_plots_for_first_use(loaded):
    """The MuJoCo environments load when a MuJoCo task is built, TensorBoard and W&B when a
    run starts writing to them, matplotlib when a plot is drawn."""
    heavy, _ = loaded["training"]
    assert not heavy & {"mujoco", "matplotlib", "tensorboard", "wandb"}, heavy


def test_the_packages_load_on_first_use_of_their_name():
    """``import mamlkit`` then ``mamlkit.tasks.omniglot_tasks``, as the README writes it."""
    shown = subprocess.run(
        [sys.executable, "-c", "import mamlkit\nprint(mamlkit.tasks.omniglot_tasks.__name__, "
                               "'tasks' in dir(mamlkit))"],
        capture_output=True, text=True)
    assert shown.stdout.split() == ["omniglot_tasks", "True"], shown.stderr
