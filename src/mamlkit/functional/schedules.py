"""Schedules over meta-training iterations, as pure functions (resume needs no extra state)."""

from __future__ import annotations

import math


def msl_weights(steps: int, iteration: int, anneal_iterations: int) -> list[float]:
    """MAML++'s multi-step loss weights of the query losses after inner steps 1..``steps``.

    Antoniou et al. 2019: all steps start at 1/steps; the earlier steps decay linearly (to a floor
    of 0.03/steps) while the last step's weight grows, over ``anneal_iterations`` (their epochs).
    """
    if steps < 1:
        return []
    base = 1.0 / steps
    decay = base / max(anneal_iterations, 1)
    floor = 0.03 / steps
    early = max(base - iteration * decay, floor)
    last = min(base + iteration * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return [early] * (steps - 1) + [last]


def cosine_lr(base: float, minimum: float, iteration: int, total: int) -> float:
    """Cosine annealing from ``base`` at iteration 1 to ``minimum`` at iteration ``total``."""
    progress = min(max(iteration - 1, 0) / max(total - 1, 1), 1.0)
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * progress))


__all__ = ["cosine_lr", "msl_weights"]
