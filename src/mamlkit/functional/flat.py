"""Parameters as one flat vector and back: for solvers that work on vectors (L-BFGS, TRPO)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def flat(tensors: Iterable[Tensor]) -> Tensor:
    """Every tensor flattened, one after the other, in one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """``flat``'s inverse: views of ``vector`` shaped like ``like``."""
    out, start = [], 0
    for t in like:
        out.append(vector[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


__all__ = ["flat", "unflat"]
