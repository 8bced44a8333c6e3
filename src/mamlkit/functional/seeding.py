"""Seeds and generators: every sampler takes either, so that runs reproduce bit for bit."""

from __future__ import annotations

import torch


def generator_from(seed_or_generator: int | torch.Generator | None) -> torch.Generator:
    """A CPU generator from a seed (or the generator itself), so samplers accept either."""
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    generator = torch.Generator()
    generator.manual_seed(0 if seed_or_generator is None else int(seed_or_generator))
    return generator


__all__ = ["generator_from"]
