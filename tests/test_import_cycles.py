"""No import cycle between the package's modules: its levels read top-down.

Every import statement counts, wherever it stands: at module level, inside a function (a "lazy"
import still means the module needs the other one, and a cycle hidden in a function is still a
cycle a reader must untangle) and under ``if TYPE_CHECKING``. ``from pkg import name`` counts as
an import of the module ``pkg.name`` where there is one, else of ``pkg``; a name of the lazy root
(``from mamlkit import MAML``) as the module the root's ``_LAZY`` table loads it from. The parent
packages that Python runs before a submodule are not counted: a package's ``__init__`` that
imports its own modules would otherwise form a cycle with each of them.
"""

import ast
from pathlib import Path

from package_files import imported_from, lazy_exports, module_name, write_files

import mamlkit

PACKAGE = Path(mamlkit.__file__).parent


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(path, package_dir): path for path in sorted(package_dir.rglob("*.py"))}


def imports_of(module: str, path: Path, modules: dict[str, Path],
               lazy: dict[str, str]) -> set[str]:
    """The modules of the package that ``module`` imports, at any depth of its source."""
    root = module.split(".")[0]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            source = imported_from(node, package)
            if source.split(".")[0] != root:
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.add(f"{source}.{alias.name}")
                elif source == root and alias.name in lazy:
                    found.add(lazy[alias.name])
                elif source in modules:
                    found.add(source)
    found.discard(module)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = module_names(package_dir)
    lazy = lazy_exports(package_dir)
    return {name: imports_of(name, path, modules, lazy) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_module_of_the_package_takes_part_in_an_import_cycle():
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_graph_holds_the_imports_of_the_real_package():
    """Not vacuous: module-level, function-level and ``from package import module`` edges."""
    graph = import_graph(PACKAGE)
    assert "mamlkit.run.steps" in graph["mamlkit.run.loop"]
    assert "mamlkit.run.checkpoint" in graph["mamlkit.run.loop"]  # from mamlkit.run import ...
    assert "mamlkit.rl.workers" in graph["mamlkit.run.build"]  # inside a function
    assert "mamlkit.functional" in graph["mamlkit.algorithms.maml"]  # from mamlkit import ...


def test_the_check_finds_cycles_through_lazy_relative_and_root_imports(tmp_path):
    package = write_files(tmp_path / "pkg", {
        "__init__.py": '_LAZY = {"Thing": "pkg.c"}\n',
        "a.py": "from pkg import b\n",
        "b.py": "def later():\n    from . import a\n",  # lazy and relative: still a cycle
        "c.py": "import pkg.d\n",
        "d.py": "from pkg import Thing\n",  # through the lazy root
        "sub/__init__.py": "from pkg.sub import e\n",  # a package importing its own module
        "sub/e.py": "from pkg.sub.f import x\n",
        "sub/f.py": "x = 1\n",
    })
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]
