"""A stack of same-shaped tasks: the unit the functional core consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TaskBatch:
    """Support and query data of several tasks, stacked on a leading task dimension.

    ``support = (x, y)`` and ``query = (x, y)`` with shapes ``[tasks, shots, ...]``.
    Tasks in one batch share shapes so that they can be evaluated in one ``vmap``.
    """

    support: tuple[Tensor, Tensor]
    query: tuple[Tensor, Tensor]

    def __post_init__(self) -> None:
        tensors = (*self.support, *self.query)
        if len(self.support) != 2 or len(self.query) != 2:
            raise ValueError("TaskBatch needs support=(x, y) and query=(x, y).")
        n = tensors[0].shape[0] if tensors[0].dim() > 0 else None
        if n is None or any(t.dim() == 0 or t.shape[0] != n for t in tensors):
            shapes = [tuple(t.shape) for t in tensors]
            raise ValueError(
                f"TaskBatch tensors must share a leading task dimension; got shapes {shapes}."
            )

    @property
    def num_tasks(self) -> int:
        return self.support[0].shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        move = lambda t: t.to(device)  # noqa: E731
        return TaskBatch(tuple(map(move, self.support)), tuple(map(move, self.query)))

    def __getitem__(self, index: int | slice) -> TaskBatch:
        """Tasks ``index`` as a smaller batch; an integer keeps a task dimension of 1."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        pick = lambda t: t[index]  # noqa: E731
        return TaskBatch(tuple(map(pick, self.support)), tuple(map(pick, self.query)))
