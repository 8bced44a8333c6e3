"""The learners' checks of their inner-loop arguments, shared by every learner.

A negative or non-finite step size, or a step count that is negative or not an integer, would
not fail: it would train or adapt silently wrong (a NaN meta-loss many steps later, or no step
at all). Each check stops with one sentence that names the argument and says what to pass.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mamlkit.functional.adapt import InnerLR

RATE_WANTED = "a finite number >= 0 (0: no inner step, the pretrained baseline)"


def _check_rate(rate: Any, name: str) -> None:
    """One step size: a number or a tensor of them, finite and >= 0."""
    if isinstance(rate, Tensor):
        with torch.no_grad():
            bad = rate[~(torch.isfinite(rate) & (rate >= 0))]
        if bad.numel():
            raise ValueError(f"{name} must hold finite numbers >= 0; got a tensor holding "
                             f"{bad.flatten()[0].item()!r}.")
        return
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"{name} must be a number, a tensor, a dict of them by parameter name or "
                        f"a list with one per inner step; got {type(rate).__name__}.")
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"{name} must be {RATE_WANTED}; got {rate!r}.")


def _check_step_rate(rate: Any, name: str) -> None:
    """One step's step size: one for all parameters, or one per parameter name."""
    if isinstance(rate, Mapping):
        for key, value in rate.items():
            _check_rate(value, f"{name}[{key!r}]")
    else:
        _check_rate(rate, name)


def check_inner_lr(inner_lr: InnerLR, name: str = "inner_lr") -> InnerLR:
    """``inner_lr`` unchanged if every step size in it is finite and >= 0, else one sentence."""
    if isinstance(inner_lr, Sequence) and not isinstance(inner_lr, str | Tensor):
        for step, rate in enumerate(inner_lr):
            _check_step_rate(rate, f"{name}[{step}]")
    else:
        _check_step_rate(inner_lr, name)
    return inner_lr


def check_steps(steps: Any, name: str = "steps") -> int:
    """A number of inner steps: an integer >= 0 (numpy and 0-d integer tensors too)."""
    wanted = f"{name} must be an integer >= 0 (a number of inner steps)"
    try:
        count = operator.index(steps) if not isinstance(steps, bool) else None
    except TypeError:
        count = None
    if count is None:
        raise TypeError(f"{wanted}; got {type(steps).__name__} {steps!r}.")
    if count < 0:
        raise ValueError(f"{wanted}; got {count}.")
    return count


def check_step_counts(steps: Sequence[Any], name: str = "steps") -> list[int]:
    """The step counts of an adaptation curve: at least one, each an integer >= 0."""
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence) or not steps:
        raise ValueError(f"{name} must hold at least one number of inner steps, e.g. [0, 1, 5]; "
                         f"got {steps!r}.")
    counts = []
    for step in steps:
        try:
            counts.append(check_steps(step))
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name} must be integers >= 0 (numbers of inner steps); got "
                              f"{list(steps)!r}.") from None
    return counts


__all__ = ["check_inner_lr", "check_step_counts", "check_steps"]
