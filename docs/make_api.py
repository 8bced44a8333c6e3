"""Write docs/api.md, the API reference, from the public names (``__all__``) of mamlkit's
packages: each name's signature and the first paragraph of its docstring.

Run ``python docs/make_api.py`` after changing a public name, a signature or a docstring;
``tests/test_api_docs.py`` fails while docs/api.md differs from what this script writes.
Standard library only (``inspect``), so it runs wherever mamlkit imports.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import types
from pathlib import Path

API_PAGE = Path(__file__).resolve().parent / "api.md"
COMMAND = "python docs/make_api.py"
PACKAGES = ("mamlkit", "mamlkit.functional", "mamlkit.models", "mamlkit.tasks", "mamlkit.data",
            "mamlkit.envs", "mamlkit.rl", "mamlkit.algorithms")
LONGEST_LINE = 100  # a longer signature is written one parameter a line
LONGEST_VALUE = 80  # a constant's value is shown when its repr is at most this long
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object reprs differ from run to run


def first_paragraph(obj: object) -> str:
    """The docstring's first paragraph on one line, or an empty string without one."""
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


class _Written(str):
    """An annotation kept as the text the source wrote (``from __future__ import annotations``),
    shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


def _unquoted(annotation: object) -> object:
    return _Written(annotation) if isinstance(annotation, str) else annotation


def signature_of(obj: object) -> str | None:
    """``inspect.signature`` as text, annotations as written, object addresses removed; None
    where it has none."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    names = getattr(inspect.unwrap(getattr(obj, "__init__", obj)), "__globals__", {})
    if inspect.isfunction(obj):
        names = obj.__globals__
    parameters = [p.replace(annotation=_unquoted(p.annotation),
                            default=default_text(p.default, names))
                  for p in signature.parameters.values()]
    signature = signature.replace(parameters=parameters,
                                  return_annotation=_unquoted(signature.return_annotation))
    return ADDRESS.sub("", str(signature))


def default_text(value: object, names: dict[str, object]) -> object:
    """A default as the module constant it is (``checksums=CHECKSUMS``), else as its repr with
    set members sorted (a set's order changes from run to run)."""
    if value is inspect.Parameter.empty:
        return value
    for name, constant in names.items():
        if constant is value and name.isupper():
            return _Written(name)
    return _Written(stable_repr(value))


def stable_repr(value: object) -> str:
    if isinstance(value, (set, frozenset)):
        members = ", ".join(sorted(stable_repr(v) for v in value))
        return f"{type(value).__name__}({{{members}}})" if value else f"{type(value).__name__}()"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{stable_repr(k)}: {stable_repr(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        inside = ", ".join(stable_repr(v) for v in value)
        return f"[{inside}]" if isinstance(value, list) else f"({inside}{',' * (len(value) == 1)})"
    return repr(value)


def code_block(name: str, signature: str, prefix: str = "") -> list[str]:
    """A python block of ``prefix name signature``, one parameter a line where it is long."""
    line = f"{prefix}{name}{signature}"
    if len(line) <= LONGEST_LINE:
        return ["```python", line, "```"]
    inside, _, returns = signature[1:].rpartition(")")
    parameters = split_parameters(inside)
    return ["```python", f"{prefix}{name}(", *(f"    {p}," for p in parameters),
            f"){returns}", "```"]


def split_parameters(text: str) -> list[str]:
    """The comma-separated parameters of a signature's text; commas inside brackets or quotes
    stay in their parameter."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [part for part in parts if part]


def own_classes(cls: type) -> list[type]:
    """``cls`` and the base classes that mamlkit defines, nearest first."""
    return [c for c in cls.__mro__ if c.__module__.startswith("mamlkit")]


def constructor_of(cls: type) -> str | None:
    """The signature to call ``cls`` with, where mamlkit defines its ``__init__`` or
    ``__new__`` (not a tuple's or a Protocol's inherited one)."""
    if any("__init__" in c.__dict__ or "__new__" in c.__dict__ for c in own_classes(cls)):
        return signature_of(cls)
    return None


def own_methods(cls: type) -> list[tuple[str, object]]:
    """The public methods and properties that ``cls`` itself defines, by name; ``__call__``
    counts as public (a Protocol's whole interface may be its call)."""
    found = []
    for name, member in cls.__dict__.items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            found.append((name, member))
    return sorted(found)


def with_doc(lines: list[str], obj: object) -> list[str]:
    doc = first_paragraph(obj)
    return [*lines, "", doc] if doc else lines


def method_doc(cls: type, name: str, method: object) -> str:
    """A method's first paragraph, else that of the method it overrides in a mamlkit class (not
    Python's own, such as ``__call__``'s "Call self as a function.")."""
    for owner in own_classes(cls):
        member = owner.__dict__.get(name)
        if member is not None and (getattr(member, "__doc__", None) or "").strip():
            return first_paragraph(member.__func__ if isinstance(
                member, (staticmethod, classmethod)) else member)
    return first_paragraph(method) if (getattr(method, "__doc__", None) or "").strip() else ""


def describe_class(name: str, cls: type) -> list[str]:
    lines = with_doc([f"### `{name}`", "", *code_block(name, constructor_of(cls) or "",
                                                       prefix="class ")], cls)
    bases = [f"`{base.__name__}`" for base in own_classes(cls)[1:]]
    methods = own_methods(cls)
    if bases or methods:
        lines.append("")
    if bases:
        lines.append(f"- Also the methods of {', '.join(bases)}.")
    for method_name, method in methods:
        if isinstance(method, property):
            heading = f"- `{method_name}` (property)"
        else:
            heading = f"- `{method_name}{signature_of(method) or '(...)'}`"
        doc = method_doc(cls, method_name, method)
        lines.append(f"{heading}: {doc}" if doc else heading)
    return lines


def home_of(obj: object) -> str | None:
    """The package of ``PACKAGES`` that defines ``obj`` (the longest prefix of its module)."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str) or not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return None
    homes = [p for p in PACKAGES if module == p or module.startswith(p + ".")]
    return max(homes, key=len, default=None)


def anchor(package_name: str) -> str:
    """The link to a package's section (GitHub drops the dots and backticks of a heading)."""
    return "#" + package_name.replace(".", "")


def describe(name: str, obj: object, package_name: str) -> list[str]:
    """The markdown lines of one public name: a class, a function or a constant/alias; a name
    that another listed package defines points there."""
    home = home_of(obj)
    if home is not None and home != package_name and name in getattr(
            importlib.import_module(home), "__all__", ()):
        return [f"### `{name}`", "", f"Defined in [`{home}`]({anchor(home)}): `{home}.{name}`.",
                ""]
    if inspect.isclass(obj):
        lines = describe_class(name, obj)
    elif callable(obj) and signature_of(obj) is not None and not hasattr(obj, "__origin__"):
        lines = with_doc([f"### `{name}`", "", *code_block(name, signature_of(obj) or "")], obj)
    elif hasattr(obj, "__origin__") or isinstance(obj, types.UnionType):
        alias = re.sub(r"\b(collections\.abc|typing)\.", "", repr(obj))
        lines = [f"### `{name}`", "", "```python", f"{name} = {alias}", "```"]
    else:
        value = ADDRESS.sub("", stable_repr(obj))
        shown = value if len(value) <= LONGEST_VALUE else f"{type(obj).__name__} (not shown)"
        lines = [f"### `{name}`", "", f"`{name} = {shown}`"]
    return [*lines, ""]


def package_section(package_name: str) -> list[str]:
    package = importlib.import_module(package_name)
    lines = [f"## `{package_name}`", ""]
    doc = first_paragraph(package)
    lines += [doc, ""] if doc else []
    for name in package.__all__:
        lines += describe(name, getattr(package, name), package_name)
    return lines


def api_page() -> str:
    """The whole text of docs/api.md."""
    lines = ["# API reference", "",
             f"Generated from the docstrings by `{COMMAND}`; do not edit by hand. Each package's "
             "public names (`__all__`), with their signatures and the first paragraph of their "
             "docstrings.", ""]
    lines += [f"- [`{name}`]({anchor(name)})" for name in PACKAGES] + [""]
    for package_name in PACKAGES:
        lines += package_section(package_name)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    API_PAGE.write_text(api_page())
    print(f"wrote {API_PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
