"""Meta-SGD (Li et al. 2017): an inner learning rate per parameter element, meta-learned."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mamlkit.algorithms.learned_rates import SafeguardedExtraSteps
from mamlkit.algorithms.maml import MAML
from mamlkit.functional.adapt import InnerLR
from mamlkit.functional.losses import LossFn
from mamlkit.functional.task_loss import TaskLoss
from mamlkit.registry import ConfigError, LearnerArgs, LearnerSpec, register


def rate_key(name: str) -> str:
    """A parameter name as a ParameterDict key (module attribute names may not contain dots)."""
    return name.replace(".", "__")


class MetaSGD(SafeguardedExtraSteps, MAML):
    """MAML whose step size alpha is a tensor shaped like theta, meta-trained with it.

    theta' = theta - alpha * grad (element-wise). The rates start at ``inner_lr`` and are
    ``nn.Parameter``s of the learner, so the outer optimiser must be built over
    ``learner.parameters()``. The learned rates are used for adaptation everywhere, also at
    evaluation: an ``inner_lr`` passed to ``adapt`` or ``adaptation_curve`` is ignored. Steps
    beyond ``inner_steps`` reuse the rates, safeguarded: a step is taken only where it lowers
    the support loss, else halved until it does (``algorithms/learned_rates.py``).
    """

    learned_rates = True

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 1,
                 first_order: bool = False, loss_fn: str | LossFn | TaskLoss = "auto",
                 batching: str = "auto", chunk_size: int | None = None,
                 adapt_names: Sequence[str] | None = None) -> None:
        if not isinstance(inner_lr, int | float):
            raise ValueError("Meta-SGD starts every learned rate at one number; got "
                             f"inner_lr={inner_lr!r}.")
        super().__init__(model, inner_lr, inner_steps, first_order, loss_fn, batching,
                         chunk_size, adapt_names)
        params = self.params()
        self._rate_names = self.adapt_names or list(params)
        self.lrs = nn.ParameterDict({
            rate_key(n): nn.Parameter(torch.full_like(params[n].detach(), float(inner_lr)))
            for n in self._rate_names
        })

    def rates(self, inner_lr: InnerLR | None = None,
              steps: int | None = None) -> dict[str, Tensor]:
        """The learned per-element rates by parameter name (``inner_lr`` is ignored); the same
        rates serve every step (beyond ``inner_steps``, safeguarded at evaluation)."""
        return {n: self.lrs[rate_key(n)] for n in self._rate_names}


def _check(config) -> None:
    if config.inner_lr == 0:
        raise ConfigError("Config key 'inner_lr' must be > 0 for algorithm metasgd, which "
                          "learns its inner rates starting from it.")


def _from_config(config, args: LearnerArgs) -> MetaSGD:
    return MetaSGD(args.model, args.inner_lr, args.inner_steps, config.first_order,
                   adapt_names=config.adapt, **args.common)


register(LearnerSpec(name="metasgd", build=_from_config, keys=("first_order", "adapt"),
                     check=_check, doc="Meta-SGD: learned per-parameter inner rates"))
