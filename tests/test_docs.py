"""The README and docs/ as a reader meets them: every relative link and #anchor leads somewhere,
the README's test command is the one CI runs, its command-line block names only options that
exist, its presets exist and its Python quick start runs."""

import re
import shlex
from pathlib import Path

import pytest

from mamlkit import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a markdown page's headings (outside code blocks); repeats get -1, -2."""
    found: set[str] = set()
    text = FENCE.sub("", page.read_text())
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        name, count = base, 0
        while name in found:
            count += 1
            name = f"{base}-{count}"
        found.add(name)
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_slugs_follow_github():
    assert slug("Any model of standard layers (`benchmarks/any_model.py`)") \
        == "any-model-of-standard-layers-benchmarksany_modelpy"
    assert slug("The paper's Figure 5 as a table") == "the-papers-figure-5-as-a-table"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_exists(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto: -- not checked offline
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no {linked.relative_to(ROOT)}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_repository_path_in_code_exists(page):
    """`tests/test_x.py`, `benchmarks/...`, `mamlkit/rl/outer.py` (under src/) written as code:
    a renamed or moved file leaves no stale path behind (patterns with <, { or * aside)."""
    written = re.findall(r"`((?:src|tests|benchmarks|docs|mamlkit)/[^`\s:]+)`", page.read_text())
    missing = [path for path in written if not re.search(r"[<{*]", path)
               and not (path.startswith("mamlkit/") and not path.endswith((".py", "/")))
               and not (ROOT / ("src/" if path.startswith("mamlkit/") else "") / path).exists()]
    assert not missing, f"{page.relative_to(ROOT)}: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(README)}
    assert not [p.name for p in PAGES[1:] if p.resolve() not in linked]


def readme_blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text()) if lang == language]


def test_the_readme_runs_the_tests_as_ci_does():
    """The README's install-and-test command ends with the test command that .ci/run runs
    (both tiers)."""
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_tests = [line for line in ci_lines if line.startswith("python -m pytest")]
    assert len(ci_tests) == 1, ci_tests
    setup = [body.strip() for body in readme_blocks("bash") if "pytest" in body]
    assert len(setup) == 1 and setup[0].endswith(f"&& {ci_tests[0]}"), (setup, ci_tests)
    assert "-m slow" in ci_tests[0]


def test_the_readme_command_line_names_only_real_commands_and_options():
    subcommands = next(action for action in cli.parser()._actions
                       if action.dest == "command").choices
    block = [line.split("#")[0] for line in readme_blocks("")[0].splitlines()]
    assert block and all(line.startswith("mamlkit ") for line in block)
    for line in block:
        words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
        options = [w for w in words[1:] if w.startswith("--")]
        if words[1] == "--version":
            continue
        known = subcommands[words[1]]._option_string_actions
        assert [o for o in options if o not in known] == [], line


def test_the_readme_presets_exist():
    presets = {p.stem for p in (ROOT / "src" / "mamlkit" / "configs").glob("*.yaml")}
    named = set(re.findall(r"mamlkit train ([a-z][\w-]+)", README.read_text()))
    named |= set(re.findall(r"^\| `([\w-]+)`", README.read_text(), re.M))
    assert named and named <= presets, named - presets


def test_the_readme_python_quick_start_runs():
    """The first Python block, two meta-iterations instead of a thousand."""
    code = readme_blocks("python")[0]
    assert "range(1000)" in code
    namespace: dict = {}
    exec(code.replace("range(1000)", "range(2)"), namespace)
    assert namespace["loss"].isfinite()
