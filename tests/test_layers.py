"""The architecture holds: imports point downward only (DESIGN.md's layers), and the calculus
loads torch alone."""

import ast
import subprocess
import sys
from pathlib import Path

import mamlkit

PACKAGE = Path(mamlkit.__file__).parent
# DESIGN.md's layers, bottom up; data/ and envs/ are sources side by side (neither imports the
# other). The package root and the command line sit on top.
LAYERS = {"functional": 1, "models": 2, "data": 3, "envs": 3, "rl": 4, "tasks": 5,
          "algorithms": 6, "run": 7, "cli": 8, "__init__": 8, "__main__": 9}


# what any module may take from the package root: its version (the root loads nothing else)
ROOT_NAMES = {"mamlkit", "mamlkit.__version__"}


def _layer(module: str) -> str:
    """``mamlkit.run.loop`` -> ``run``; ``mamlkit`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    """Every ``mamlkit.*`` module ``path`` imports, at any depth (function-local included)."""
    package = ".".join(("mamlkit", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("mamlkit")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name == "mamlkit":  # from mamlkit import functional -> mamlkit.functional
                found += [f"mamlkit.{a.name}" for a in node.names]
            elif name.startswith("mamlkit"):
                found.append(name)
    return found


def test_no_module_imports_a_layer_above_its_own():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer(".".join(("mamlkit", *path.relative_to(PACKAGE).with_suffix("").parts)))
        assert own in LAYERS, f"{path} is in no layer of DESIGN.md"
        for imported in _imports(path):
            if imported in ROOT_NAMES:
                continue
            other = _layer(imported)
            if LAYERS.get(other, 99) > LAYERS[own] or (LAYERS.get(other) == LAYERS[own]
                                                       and other != own):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_walker_sees_imports_that_break_the_rule():
    tree = "from mamlkit.run.loop import train\nimport mamlkit.tasks\nfrom mamlkit import rl\n"
    path = PACKAGE / "functional" / "_probe.py"
    path.write_text(tree)
    try:
        assert _imports(path) == ["mamlkit.run.loop", "mamlkit.tasks", "mamlkit.rl"]
    finally:
        path.unlink()


def test_importing_the_functional_core_loads_torch_only():
    """``import mamlkit.functional`` pulls in no data loading, images, environments or plots."""
    code = ("import sys, torch\n"
            "torch_only = set(sys.modules)\n"
            "import mamlkit.functional\n"
            "heavy = ['PIL', 'zipfile', 'urllib.request', 'gymnasium', 'mujoco', 'matplotlib',\n"
            "         'yaml', 'safetensors', 'tqdm', 'tensorboard', 'numpy']\n"
            "added = set(sys.modules) - torch_only\n"
            "mine = sorted(m for m in added if m.startswith('mamlkit'))\n"
            "print([m for m in heavy if m in added]); print(mine)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "[]", f"importing mamlkit.functional loaded {out[0]}"
    modules = eval(out[1])  # noqa: S307 - our own repr of a list of names
    assert all(m == "mamlkit" or m.startswith("mamlkit.functional") for m in modules), modules


def test_supervised_training_imports_without_the_simulators():
    """gymnasium and MuJoCo serve meta-RL alone: a machine without them (a GPU image, say) still
    trains and evaluates supervised runs, and ``mamlkit.envs`` loads, its gymnasium environment
    failing only when it is used."""
    code = ("import importlib.abc, sys\n"
            "class Hide(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.partition('.')[0] in ('gymnasium', 'mujoco'):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "import mamlkit.cli, mamlkit.run.loop, mamlkit.run.evaluate, mamlkit.envs\n"
            "from mamlkit.run.config import resolve\n"
            "from mamlkit.run.load import untrained\n"
            "untrained(resolve('sinusoid', {}))\n"
            "try:\n"
            "    mamlkit.envs.Navigation2D\n"
            "except ModuleNotFoundError as error:\n"
            "    print(error.name)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "gymnasium"
