"""Layer 4: what only H > 1 needs -- batched sampling, returns and GAE, the linear baseline,
the Gaussian policy, the policy-gradient losses (the VPG inner loss is a task loss of the
functional core) and the TRPO/PPO/Adam outer steps, given closures (they know no learner)."""

from mamlkit.rl.advantages import advantages_of, rl_data
from mamlkit.rl.baseline import baseline_features, fit_linear, linear_baseline
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.losses import ImitationLoss, RLData, VPGLoss
from mamlkit.rl.outer import OuterSettings, OuterStats, outer_step
from mamlkit.rl.returns import discounted_returns, gae, normalize
from mamlkit.rl.sampling import PolicyFn, rollout, sample_episodes, task_generators, task_seeds
from mamlkit.rl.workers import SamplerPool

__all__ = [
    "Episodes",
    "ImitationLoss",
    "OuterSettings",
    "OuterStats",
    "PolicyFn",
    "RLData",
    "SamplerPool",
    "VPGLoss",
    "advantages_of",
    "baseline_features",
    "discounted_returns",
    "fit_linear",
    "gae",
    "linear_baseline",
    "normalize",
    "outer_step",
    "rl_data",
    "rollout",
    "sample_episodes",
    "task_generators",
    "task_seeds",
]
