"""The pretrained baseline of few-shot classification: an ordinary classifier over all the
meta-training classes, adapted to a new task only at evaluation (Chen et al. 2019; Tian et al.
2020).

The network is the one MAML would meta-train; its last linear layer is its head. Training
replaces that head by a global one with a row per meta-training class (``global_head``) and
minimises the cross-entropy of the global labels. The network's own head stays zero: the
new, zero-initialised N-way head that evaluation fine-tunes. Each task's support set and each
query set run through the network as one batch, as in MAML, so batch norm sees the same
batches in training and at evaluation.

Evaluation (the three baselines):
- fine-tune: the whole network with the zero head, ``k`` plain SGD steps of ``inner_lr`` on the
  support set (``adaptation_curve``, inherited from MAML unchanged: the same steps and step size);
- linear head: the backbone frozen, a multinomial logistic regression fit on the L2-normalised
  support features (``functional.heads.fit_logistic_head``);
- nearest mean: the backbone frozen, cosine similarity to the class means of the normalised
  support features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlkit.algorithms.maml import MAML
from mamlkit.functional import heads
from mamlkit.functional.adapt import InnerLR
from mamlkit.functional.batching import Batching, TaskOps
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.registry import TASKS, ConfigError, LearnerArgs, LearnerSpec, register

FROZEN_BASELINES = ("linear head", "nearest mean")


def last_linear(model: nn.Module) -> str:
    """The name of the model's last ``nn.Linear`` module: its head."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"algorithm pretrained needs a network whose last layer is an "
                         f"nn.Linear head; {type(model).__name__} has none.")
    return names[-1]


def _sums(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy and correct predictions over the examples of each task (``[T]``
    for stacked tasks, scalars for one task)."""
    flat = F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none")
    correct = (logits.argmax(dim=-1) == labels).to(logits.dtype)
    return flat.view(labels.shape).sum(dim=-1), correct.sum(dim=-1)


def _global_sums(ops: TaskOps, params: dict[str, Tensor], data: Any) -> tuple[Tensor, Tensor]:
    """One task's (or stacked chunk's) summed loss and correct count over support and query."""
    (sx, sy), (qx, qy) = data
    loss_s, correct_s = _sums(ops.forward(params, sx), sy)
    loss_q, correct_q = _sums(ops.forward(params, qx), qy)
    return loss_s + loss_q, correct_s + correct_q


def _features(ops: TaskOps, params: dict[str, Tensor], data: Any) -> tuple[Tensor, Tensor]:
    (sx, _), (qx, _) = data
    return ops.forward(params, sx), ops.forward(params, qx)


class Pretrained(MAML):
    """``model`` trained as a classifier over ``num_classes`` global classes; evaluated as the
    three baselines of the module docstring. ``inner_lr`` and ``inner_steps`` are MAML's: the
    fine-tuning step size and the steps of the training run's validation curve.
    """

    frozen_names = FROZEN_BASELINES  # the rows of ``frozen_accuracy``, in order

    def __init__(self, model: nn.Module, num_classes: int, inner_lr: InnerLR,
                 inner_steps: int = 1, batching: str | Batching = "auto",
                 chunk_size: int | None = None, adapt_names: Sequence[str] | None = None,
                 head_steps: int = 100, head_weight_decay: float = 1e-3, **kwargs: Any) -> None:
        head_name = last_linear(model)
        super().__init__(model, inner_lr, inner_steps, first_order=True, batching=batching,
                         chunk_size=chunk_size, adapt_names=adapt_names, **kwargs)
        self._head_name = head_name
        head = model.get_submodule(head_name)
        assert isinstance(head, nn.Linear)  # last_linear's
        with torch.no_grad():  # the new N-way head of every task starts at zero
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
        self.global_head = nn.Linear(head.in_features, num_classes).to(head.weight.device)
        self.head_steps, self.head_weight_decay = head_steps, head_weight_decay

    def _head_keys(self) -> tuple[str, str]:
        return f"{self._head_name}.weight", f"{self._head_name}.bias"

    def training_parameters(self) -> list[nn.Parameter]:
        """What pretraining optimises: the network without its (zero) head, the global head."""
        skip = set(self._head_keys())
        return [p for n, p in self.model.named_parameters() if n not in skip] + list(
            self.global_head.parameters())

    def _with_head(self, weight: Tensor, bias: Tensor) -> dict[str, Tensor]:
        w, b = self._head_keys()
        return {**self.params(), w: weight, b: bias}

    def global_sums(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy and correct predictions ``[T]`` of the global labels of each
        task's support and query images (one network call per set, as MAML's)."""
        params = self._with_head(self.global_head.weight, self.global_head.bias)
        return self.batching.map(_global_sums, self.model, self.buffers_dict(), self.loss_fn,
                                 params, (batch.support, batch.query))

    def pretrain_loss(self, batch: TaskBatch) -> Tensor:
        """Mean cross-entropy over every image of ``batch`` (labels: global class ids)."""
        loss, _ = self.global_sums(batch)
        return loss.sum() / (batch.support[1].numel() + batch.query[1].numel())

    def meta_loss(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        raise TypeError("The pretrained baseline trains on global labels: use pretrain_loss "
                        "on a batch from tasks.global_labels.sample_global.")

    @torch.no_grad()
    def features(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Frozen features ``[T, n, D]`` of each task's support and query images: the network
        up to its head (the head swapped for the identity)."""
        dim = self.global_head.in_features
        weight = torch.eye(dim, device=self.global_head.weight.device)
        params = self._with_head(weight, weight.new_zeros(dim))
        return self.batching.map(_features, self.model, self.buffers_dict(), self.loss_fn,
                                 params, (batch.support, batch.query))

    @torch.no_grad()
    def frozen_accuracy(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Query accuracy ``[T]`` of the linear head and of the nearest class mean, both on
        the frozen features of the support set (N-way: the network's head has N outputs)."""
        head = self.model.get_submodule(self._head_name)
        assert isinstance(head, nn.Linear)  # last_linear's, as in __init__
        ways = head.out_features
        support, query = self.features(batch)
        sy, qy = batch.support[1], batch.query[1]
        support, query = heads.normalise(support), heads.normalise(query)
        weight, bias = heads.fit_logistic_head(support, sy, ways, self.head_weight_decay,
                                               self.head_steps)
        return {"linear head": heads.predicted_accuracy(
                    heads.head_logits(query, weight, bias), qy),
                "nearest mean": heads.predicted_accuracy(
                    heads.nearest_mean_logits(support, sy, query, ways), qy)}


__all__ = ["FROZEN_BASELINES", "Pretrained", "last_linear"]


def _check(config) -> None:
    """Global labels need tasks over a class-indexed dataset."""
    task = TASKS.get(config.task)
    if task is None or not task.classes:
        image_tasks = " or ".join(name for name, spec in TASKS.items() if spec.classes)
        raise ConfigError(f"algorithm pretrained is the baseline of image classification (task "
                          f"{image_tasks}), not of task {config.task}; for regression and RL the "
                          "pretrained baseline is inner_lr=0.")


def _from_config(config, args: LearnerArgs) -> Pretrained:
    """Its global head has a row per meta-training class (those of the train split, whichever
    split the caller built)."""
    return Pretrained(args.model, args.train_tasks().num_classes, args.inner_lr,
                      args.inner_steps, adapt_names=config.adapt, head_steps=config.head_steps,
                      head_weight_decay=config.head_weight_decay, **args.common)


register(LearnerSpec(name="pretrained", build=_from_config, rl=False, pretrains=True,
                     check=_check, keys=("adapt", "head_steps", "head_weight_decay"),
                     doc="the pretrained baseline: a classifier over all training classes"))
