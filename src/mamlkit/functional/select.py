"""Choosing parameters by name: glob patterns such as ``head.*`` for any ``nn.Module``.

The inner loop may adapt only some parameters (ANIL adapts the head, the body is meta-learned in
the outer loop only). Patterns make that split work for any module without knowing its layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from torch import nn


def matches(name: str, pattern: str) -> bool:
    """``name`` matches ``pattern``, or names a parameter below it (``head`` -> ``head.w``)."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def select_names(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names (in their order) that match at least one glob pattern.

    A pattern that matches nothing is an error naming the valid parameter names: a typo would
    otherwise silently freeze the whole inner loop.
    """
    names = list(names)
    for pattern in patterns:
        if not any(matches(n, pattern) for n in names):
            raise ValueError(f"Parameter pattern {pattern!r} matches no parameter; the "
                             f"parameters are: {', '.join(names)}.")
    return [n for n in names if any(matches(n, p) for p in patterns)]


def last_layer_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the last sub-module that owns any: the "head" of most
    networks (the last ``Linear`` of an MLP; a policy's mean head rather than its ``log_std``,
    which the policy module owns itself). The root's own parameters only if nothing else has."""
    owners = [(prefix, module) for prefix, module in model.named_modules()
              if any(True for _ in module.parameters(recurse=False))]
    if not owners:
        raise ValueError("The model has no parameters to adapt.")
    children = [(prefix, module) for prefix, module in owners if prefix]
    prefix, module = (children or owners)[-1]
    return [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]


__all__ = ["last_layer_names", "matches", "select_names"]
