"""MAML++ (Antoniou et al. 2019, "How to train your MAML"), each improvement on its own switch.

- ``lslr``: learned per-layer (per parameter tensor), per-step inner learning rates.
- ``msl``: multi-step loss, the query loss after every inner step with annealed weights.
- ``bnwb``: per-step batch-norm weights and biases, meta-learned, not adapted in the inner loop
  (per-step running statistics are moot: batch norm here always uses the batch's statistics).
- ``fo_iterations``: derivative-order annealing, first order for the first N iterations.
- Cosine annealing of the meta learning rate is the training loop's ``cosine_meta_lr`` key (it
  is a property of the outer optimiser, so every learner can use it).

With every switch off this is MAML, to the last bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mamlkit.algorithms.arguments import check_steps
from mamlkit.algorithms.learned_rates import SafeguardedExtraSteps
from mamlkit.algorithms.maml import MAML
from mamlkit.algorithms.metasgd import rate_key
from mamlkit.functional.adapt import InnerLR, scalar_step_size
from mamlkit.functional.losses import LossFn
from mamlkit.functional.multistep import multi_step_losses
from mamlkit.functional.schedules import msl_weights
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.functional.task_loss import TaskLoss
from mamlkit.models.batch_norm import TaskBatchNorm
from mamlkit.registry import LearnerArgs, LearnerSpec, register


def batch_norm_names(model: nn.Module) -> list[str]:
    """Names of the affine parameters of every batch-norm layer of ``model``."""
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, TaskBatchNorm | nn.modules.batchnorm._BatchNorm):
            names += [f"{prefix}.{n}" if prefix else n
                      for n, _ in module.named_parameters(recurse=False)]
    return names


class MAMLpp(SafeguardedExtraSteps, MAML):
    """MAML++: MAML plus the switches ``msl``, ``lslr``, ``bnwb`` and ``fo_iterations``.

    ``msl_iterations`` is how long the multi-step loss weights take to anneal onto the last step
    (the paper's epochs, counted in meta-iterations here). The training loop reports the current
    iteration through ``set_iteration``; without it the learner is at iteration 0 (start of the
    annealing). With ``lslr`` the learned rates are used at evaluation too (a given scalar
    ``inner_lr`` is ignored); at evaluation, steps beyond ``inner_steps`` reuse the last step's
    rates and batch-norm parameters, safeguarded: a step is taken only where it lowers the
    support loss, else halved until it does (``algorithms/learned_rates.py``). Works with every
    batching strategy, ``stacked`` included.
    """

    def __init__(self, model: nn.Module, inner_lr: InnerLR, inner_steps: int = 5,
                 first_order: bool = False, loss_fn: str | LossFn | TaskLoss = "auto",
                 batching: str = "auto", chunk_size: int | None = None,
                 adapt_names: Sequence[str] | None = None, *, msl: bool = True,
                 msl_iterations: int = 1000, lslr: bool = True, bnwb: bool = True,
                 fo_iterations: int = 0) -> None:
        if check_steps(inner_steps, "inner_steps") < 1:  # before the model is touched
            raise ValueError("MAML++ needs inner_steps >= 1: its rates and batch-norm weights "
                             "are per step.")
        super().__init__(model, inner_lr, inner_steps, first_order, loss_fn, batching,
                         chunk_size, adapt_names)
        self.msl, self.msl_iterations, self.lslr = msl, msl_iterations, lslr
        self.bnwb, self.fo_iterations = bnwb, fo_iterations
        self.base_first_order = first_order
        self.learned_rates = lslr
        self._iteration = 0
        params = self.params()
        self.bn_names = batch_norm_names(model) if bnwb else []
        if self.bn_names:  # per-step copies replace them; the inner loop leaves them alone
            self.adapt_names = [n for n in (self.adapt_names or params)
                                if n not in self.bn_names]
            self.bn_steps = nn.ParameterDict({
                rate_key(n): nn.Parameter(params[n].detach().unsqueeze(0).repeat(
                    inner_steps + 1, *[1] * params[n].dim()))
                for n in self.bn_names})
        self._rate_names = self.adapt_names or list(params)
        if lslr:
            self.lslr_rates = nn.ParameterDict({
                rate_key(n): nn.Parameter(torch.tensor(
                    [float(scalar_step_size(inner_lr, s, "MAML++ with learned rates (lslr)"))
                     for s in range(inner_steps)],
                    dtype=params[n].dtype, device=params[n].device))
                for n in self._rate_names})

    def set_iteration(self, iteration: int, total: int) -> None:
        """The meta-iteration (1-based) about to run: drives MSL and derivative-order annealing."""
        self._iteration = iteration
        self.first_order = self.base_first_order or iteration <= self.fo_iterations

    def rates(self, inner_lr: InnerLR | None = None, steps: int | None = None) -> InnerLR:
        """Per-step rates: learned ones (LSLR; ``inner_lr`` ignored), else as for MAML."""
        if not self.lslr:
            return super().rates(inner_lr)
        count = max(steps or 0, self.inner_steps)
        return [{n: self.lslr_rates[rate_key(n)][min(s, self.inner_steps - 1)]
                 for n in self._rate_names} for s in range(count)]

    def per_step(self) -> list[dict[str, Tensor]] | None:
        """Batch-norm weights and biases for the parameters after 0..inner_steps steps."""
        if not self.bn_names:
            return None
        return [{n: self.bn_steps[rate_key(n)][s] for n in self.bn_names}
                for s in range(self.inner_steps + 1)]

    def weights(self, steps: int) -> list[float]:
        """Weights of the query losses after steps 1..steps (one-hot on the last without MSL)."""
        if self.msl:
            return msl_weights(steps, self._iteration, self.msl_iterations)
        return [0.0] * (steps - 1) + [1.0]

    def objective(self, batch: TaskBatch, steps: int | None = None) -> tuple[Tensor, Tensor]:
        """The MSL-weighted meta-objective and the mean last-step query loss."""
        steps = self.steps_or_default(steps)
        losses = multi_step_losses(
            self.model, self.params(), self.buffers_dict(), batch, loss=self.loss_fn,
            inner=self.inner_loop(steps), weights=self.weights(steps), batching=self.batching)
        return losses[:, 0].mean(), losses[:, 1].mean()

    def meta_loss(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """The gradient is the (multi-step) objective's, the value the mean last-step query
        loss, so that learning curves compare with MAML's."""
        self.observe(batch)
        objective, last = self.objective(batch, steps)
        if not self.msl:
            return objective
        return last.detach() + (objective - objective.detach())


def _from_config(config, args: LearnerArgs) -> MAMLpp:
    return MAMLpp(args.model, args.inner_lr, args.inner_steps, config.first_order,
                  adapt_names=config.adapt, msl=config.msl,
                  msl_iterations=config.msl_iterations, lslr=config.lslr, bnwb=config.bnwb,
                  fo_iterations=config.fo_iterations, **args.common)


register(LearnerSpec(name="mamlpp", build=_from_config, min_inner_steps=1,
                     keys=("first_order", "adapt", "msl", "msl_iterations", "lslr", "bnwb",
                           "fo_iterations"),
                     doc="MAML++: multi-step loss, learned per-step rates and batch-norm "
                         "weights"))
