"""What the run machinery asks of a learner: the ``Learner`` protocol that ``run/`` is typed
against. Every learner of the MAML family (``algorithms/``) has this shape; the pretrained
baseline adds the ``Pretrains`` part."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from mamlkit.functional.task_batch import TaskBatch

InnerLr = Any  # a step size, a tensor of them, or one per inner step (functional.adapt.InnerLR)


@runtime_checkable
class Learner(Protocol):
    """A meta-learner: meta-parameters around ``model``, a meta-loss, and adaptation."""

    model: nn.Module
    inner_steps: int
    checkpoint_inner: bool
    learned_rates: bool  # adapts with step sizes of its own (Meta-SGD, MAML++ with LSLR)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def rebatch(self) -> None: ...

    def rates(self, inner_lr: InnerLr | None = None, steps: int | None = None) -> InnerLr: ...

    def set_iteration(self, iteration: int, total: int) -> None: ...

    def meta_loss(self, batch: TaskBatch, steps: int | None = None) -> Tensor: ...

    def adapted_params(self, support: Any, steps: int | None = None,
                       inner_lr: InnerLr | None = None) -> tuple[dict[str, Tensor], bool]: ...

    def adapt(self, x: Any, y: Any = None, steps: int | None = None,
              inner_lr: InnerLr | None = None) -> dict[str, Tensor]: ...

    def map_adapted(self, batch: TaskBatch, fn: Callable[..., Any],
                    first_order: bool | None = None) -> Any: ...

    def adaptation_curve(self, batch: TaskBatch, steps: Sequence[int], metric: Any,
                         inner_lr: InnerLr | None = None) -> Tensor: ...

    def __call__(self, x: Any, params: dict[str, Tensor] | None = None) -> Tensor: ...


@runtime_checkable
class Pretrains(Learner, Protocol):
    """The pretrained baseline: trained on global labels, evaluated also with frozen heads."""

    frozen_names: Sequence[str]

    def training_parameters(self) -> list[nn.Parameter]: ...

    def pretrain_loss(self, batch: TaskBatch) -> Tensor: ...

    def global_sums(self, batch: TaskBatch) -> tuple[Tensor, Tensor]: ...

    def frozen_accuracy(self, batch: TaskBatch) -> dict[str, Tensor]: ...


__all__ = ["Learner", "Pretrains"]
