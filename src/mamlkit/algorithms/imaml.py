"""Implicit MAML (Rajeswaran et al. 2019): meta-gradients by conjugate gradient, O(1) memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.algorithms.arguments import check_step_counts
from mamlkit.algorithms.maml import MAML
from mamlkit.functional.adapt import InnerLR
from mamlkit.functional.batching import TaskOps
from mamlkit.functional.implicit import implicit_meta_grad, proximal_adaptation_curve
from mamlkit.functional.losses import LossFn
from mamlkit.functional.proximal import ProximalSolver
from mamlkit.functional.reptile import surrogate
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.functional.task_loss import TaskLoss
from mamlkit.registry import LearnerArgs, LearnerSpec, register


class IMAML(MAML):
    """Implicit MAML as a learner.

    Each task solves ``min_phi L_s(phi) + lam/2 ||phi - theta||^2`` with ``inner_steps`` steps
    of ``solver`` (``functional/proximal.py``; no graph kept): ``lbfgs`` (default), L-BFGS with
    a backtracking line search whose first direction is the plain step ``inner_lr``, or ``gd``,
    fixed gradient steps of ``inner_lr``; either stops moving once the proximal gradient norm is
    at most ``tol``. Then ``cg_steps`` of conjugate gradient give ``(I + H_s/lam)^-1 grad
    L_q(phi)``, the meta-gradient at the optimum. ``meta_loss(batch).backward()`` puts its task
    mean into ``.grad``; the value is the mean query loss. All parameters adapt. Batching:
    ``vmap`` or ``loop``; for ``stacked`` models (Conv4) the meta-gradient runs in a loop over
    tasks, because conjugate gradient needs per-task Hessian-vector products that the stacked
    strategy does not provide (evaluation uses the loop too). ``adapt`` and
    ``adaptation_curve`` (evaluation) take the same solver's steps as meta-training, with the
    eval step size: theta was trained for that optimum.
    """

    def __init__(self, model: nn.Module, inner_lr: InnerLR, inner_steps: int = 10,
                 loss_fn: str | LossFn | TaskLoss = "auto", batching: str = "auto",
                 chunk_size: int | None = None, lam: float = 1.0, cg_steps: int = 5,
                 max_grad_norm: float | None = None, solver: str = "lbfgs",
                 tol: float = 0.0) -> None:
        if lam <= 0 or cg_steps < 1:
            raise ValueError(f"iMAML needs lam > 0 and cg_steps >= 1; got {lam}, {cg_steps}.")
        super().__init__(model, inner_lr, inner_steps, True, loss_fn, batching, chunk_size)
        self.lam = lam
        self.cg_steps = cg_steps
        self.max_grad_norm = max_grad_norm
        self.solver_kind = solver
        self.tol = tol
        self.solver()  # an unknown solver or a bad tolerance stops here, with one sentence

    def solver(self, inner_lr: InnerLR | None = None) -> ProximalSolver:
        """The inner solver with this learner's settings (``inner_lr``: the step size to use)."""
        return ProximalSolver(self.solver_kind, self.rates(inner_lr), self.lam, self.tol,
                              self.max_grad_norm)

    def meta_loss(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Mean query loss at the inner solutions; its gradient is the implicit meta-gradient."""
        self.observe(batch)
        params = self.params()
        grads, losses = implicit_meta_grad(
            self.model, params, self.buffers_dict(), batch, loss=self.loss_fn,
            solver=self.solver(), steps=self.steps_or_default(steps),
            cg_steps=self.cg_steps, batching=self.batching)
        return surrogate(losses.mean(), params, grads)

    def adapt(self, x: Any, y: Any = None, steps: int | None = None,
              inner_lr: InnerLR | None = None) -> dict[str, Tensor]:
        """The solver's steps on one task's support set, as in meta-training."""
        ops = TaskOps(self.model, self.buffers_dict(), self.loss_fn)
        solver = replace(self.solver(inner_lr), eager=True)  # one task: may branch on values
        return solver.solve(ops.bound(), self.params(), x if y is None else (x, y),
                            self.steps_or_default(steps))

    @torch.no_grad()
    def adaptation_curve(self, batch: TaskBatch, steps: Sequence[int],
                         metric: str | LossFn | TaskLoss,
                         inner_lr: InnerLR | None = None) -> Tensor:
        """Query metric after each number of solver steps (how iMAML adapts at test time)."""
        steps = check_step_counts(steps)
        return proximal_adaptation_curve(
            self.model, self.params(), self.buffers_dict(), batch, loss=self.loss_fn,
            metric=metric, solver=self.solver(inner_lr), steps=steps, batching=self.batching)


def _from_config(config, args: LearnerArgs) -> IMAML:
    return IMAML(args.model, args.inner_lr, args.inner_steps, lam=config.imaml_lambda,
                 cg_steps=config.imaml_cg_steps, max_grad_norm=config.imaml_max_grad_norm,
                 solver=config.imaml_solver, tol=config.imaml_tol, **args.common)


register(LearnerSpec(name="imaml", build=_from_config, rl=False, min_inner_steps=1,
                     keys=("imaml_lambda", "imaml_cg_steps", "imaml_max_grad_norm", "imaml_solver",
                           "imaml_tol"),
                     doc="iMAML: implicit gradients of a proximal inner problem"))
