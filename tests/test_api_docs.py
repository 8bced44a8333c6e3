"""docs/api.md, the API reference, is what docs/make_api.py writes from the code's docstrings and
signatures today: a change to a public name, signature or docstring fails here until the page is
regenerated."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def make_api() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_api", DOCS / "make_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_api"] = module
    spec.loader.exec_module(module)
    return module


def test_the_api_page_is_up_to_date():
    pytest.importorskip("gymnasium")  # mamlkit.envs.Navigation2D is one of the public names
    script = make_api()
    written = (DOCS / "api.md").read_text()
    assert written == script.api_page(), (
        f"docs/api.md is out of date with the code's docstrings: run `{script.COMMAND}`.")


def test_the_api_page_holds_every_public_name():
    script = make_api()
    text = (DOCS / "api.md").read_text()
    for package_name in script.PACKAGES:
        assert f"## `{package_name}`" in text
        for name in importlib.import_module(package_name).__all__:
            assert f"### `{name}`" in text, (package_name, name)


def test_long_signatures_are_split_at_top_level_commas_only():
    script = make_api()
    assert script.split_parameters("a: dict[str, int] = {'x': 1}, b: str = 'p, q', *, c=(1, 2)") \
        == ["a: dict[str, int] = {'x': 1}", "b: str = 'p, q'", "*", "c=(1, 2)"]
    block = script.code_block("f", "(" + ", ".join(f"argument_{i}: int" for i in range(9)) + ")")
    assert block[1] == "f(" and block[2] == "    argument_0: int," and block[-2] == ")"
