"""From sampled episodes to the data the policy-gradient losses need."""

from __future__ import annotations

from torch import Tensor

from mamlkit.rl.baseline import linear_baseline
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.losses import RLData
from mamlkit.rl.returns import gae, normalize


def advantages_of(episodes: Episodes, discount: float, gae_lambda: float,
                  cross_fit: bool = False) -> Tensor:
    """GAE on the linear feature baseline, normalised per task (the paper's advantages);
    ``cross_fit``: the baseline of each half of the trajectories fitted on the other half."""
    values = linear_baseline(episodes, discount, cross_fit=cross_fit)
    adv = gae(episodes.rewards, values, episodes.mask, discount, gae_lambda)
    return normalize(adv, episodes.mask)


def rl_data(episodes: Episodes, discount: float, gae_lambda: float,
            cross_fit: bool = False) -> RLData:
    return RLData(episodes.observations, episodes.actions,
                  advantages_of(episodes, discount, gae_lambda, cross_fit), episodes.mask)


__all__ = ["advantages_of", "rl_data"]
