"""A package read as source for the import-structure tests: module names, the root's lazy
table, and small packages written to disk."""

from __future__ import annotations

import ast
from pathlib import Path


def write_files(folder: Path, files: dict[str, str]) -> Path:
    """``files`` (relative path -> text) under ``folder``; returns ``folder``."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def module_name(path: Path, package_dir: Path) -> str:
    """``<package>/run/loop.py`` -> ``mamlkit.run.loop`` (``__init__`` names its package)."""
    parts = path.relative_to(package_dir).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package_dir.name, *parts))


def lazy_exports(package_dir: Path) -> dict[str, str]:
    """The root's ``_LAZY`` table (name -> module it loads), read from its source: ``from mamlkit
    import MAML`` loads ``mamlkit.algorithms`` although no import statement names it."""
    tree = ast.parse((package_dir / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY"
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{package_dir / '__init__.py'} has no _LAZY table to read")


def imported_from(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` names, relative ones resolved in ``package``."""
    if not node.level:
        return node.module or ""
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base
