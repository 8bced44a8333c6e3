"""Layer 4: meta-RL -- batched sampling, returns and GAE, the linear baseline (and, beside them,
the policy, the policy-gradient losses and the TRPO/PPO outer steps)."""

from mamlkit.rl.baseline import baseline_features, fit_linear, linear_baseline
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.returns import discounted_returns, gae, normalize
from mamlkit.rl.sampling import PolicyFn, rollout, sample_episodes, task_generators, task_seeds
from mamlkit.rl.workers import SamplerPool

__all__ = [
    "Episodes",
    "PolicyFn",
    "SamplerPool",
    "baseline_features",
    "discounted_returns",
    "fit_linear",
    "gae",
    "linear_baseline",
    "normalize",
    "rollout",
    "sample_episodes",
    "task_generators",
    "task_seeds",
]
