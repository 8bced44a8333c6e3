"""The scripts of benchmarks/ (a folder of scripts, not a package) as modules for the tests,
loaded from their files: a script that no longer imports fails its tests instead of skipping
them, as ``pytest.importorskip`` would."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, folder: Path = BENCHMARKS) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``benchmark_<name>``; any error importing it
    (a missing file, a renamed mamlkit function) is raised."""
    module_name = f"benchmark_{name}"
    if module_name in sys.modules and folder == BENCHMARKS:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None, folder / f"{name}.py"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
