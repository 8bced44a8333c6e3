"""Implicit MAML (Rajeswaran et al. 2019): meta-gradients by conjugate gradient, O(1) memory."""

from __future__ import annotations

from torch import Tensor, nn

from mamlkit.algorithms.maml import MAML
from mamlkit.functional.adapt import InnerLR
from mamlkit.functional.implicit import implicit_meta_grad
from mamlkit.functional.losses import LossFn
from mamlkit.functional.reptile import surrogate
from mamlkit.tasks.batch import TaskBatch


class IMAML(MAML):
    """Implicit MAML as a learner.

    Each task solves ``min_phi L_s(phi) + lam/2 ||phi - theta||^2`` approximately with
    ``inner_steps`` gradient steps of ``inner_lr`` (no graph kept), then ``cg_steps`` of
    conjugate gradient give ``(I + H_s/lam)^-1 grad L_q(phi)``, the meta-gradient at the fixed
    point. ``meta_loss(batch).backward()`` puts its task mean into ``.grad``; the value is the
    mean query loss. All parameters adapt. Batching: ``vmap`` or ``loop``; for ``stacked``
    models (Conv4) the meta-gradient runs in a loop over tasks, because conjugate gradient needs
    per-task Hessian-vector products that the stacked strategy does not provide (evaluation
    still uses ``stacked``). Evaluation fine-tunes with plain SGD steps of the eval step size,
    the protocol shared by every learner (with small ``inner_lr * lam`` the proximal term hardly
    changes those steps).
    """

    def __init__(self, model: nn.Module, inner_lr: InnerLR, inner_steps: int = 10,
                 loss_fn: str | LossFn = "mse", batching: str = "auto",
                 chunk_size: int | None = None, lam: float = 1.0, cg_steps: int = 5,
                 max_grad_norm: float | None = None) -> None:
        if lam <= 0 or cg_steps < 1:
            raise ValueError(f"iMAML needs lam > 0 and cg_steps >= 1; got {lam}, {cg_steps}.")
        super().__init__(model, inner_lr, inner_steps, True, loss_fn, batching, chunk_size)
        self.lam = lam
        self.cg_steps = cg_steps
        self.max_grad_norm = max_grad_norm

    def meta_loss(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Mean query loss at the inner solutions; its gradient is the implicit meta-gradient."""
        params = self.params()
        grads, losses = implicit_meta_grad(
            self.model, params, self.buffers_dict(), batch, loss_fn=self.loss_fn,
            inner_lr=self.rates(), steps=self.inner_steps if steps is None else steps,
            lam=self.lam, cg_steps=self.cg_steps, max_grad_norm=self.max_grad_norm,
            batching="loop" if self.batching == "stacked" else self.batching,
            chunk_size=self.chunk_size)
        return surrogate(losses.mean(), params, grads)
