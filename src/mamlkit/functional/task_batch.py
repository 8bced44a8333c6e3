"""The containers the functional core consumes: a stack of tasks, and per-step support data.

A task's data is any pytree of tensors with a leading task dimension: ``(x, y)`` for supervised
tasks (H = 1), a batch of episodes for reinforcement-learning tasks (H > 1). Tasks in one batch
share shapes so that one ``vmap`` (or one task-stacked call) evaluates them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree


class StepData(tuple[Any, ...]):
    """Support data with one entry per inner step (RL: fresh trajectories after every step).

    Any other support is used at every inner step (supervised tasks adapt on one support set).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"StepData({list(self)!r})"


pytree.register_pytree_node(
    StepData,
    lambda steps: (list(steps), None),
    lambda children, _: StepData(children),
    serialized_type_name="mamlkit.functional.task_batch.StepData",
)


def support_at(support: Any, step: int) -> Any:
    """The support data of inner step ``step`` (0-based)."""
    if not isinstance(support, StepData):
        return support
    if step >= len(support):
        raise ValueError(f"Inner step {step + 1} has no support data: the task holds data for "
                         f"{len(support)} step(s).")
    return support[step]


def leaves(tree: Any) -> list[Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]


def take(tree: Any, index: int | slice | Tensor) -> Any:
    """Tasks ``index`` of every tensor in ``tree`` (an int drops the task dimension)."""
    return pytree.tree_map(lambda t: t[index] if isinstance(t, Tensor) else t, tree)


def _is_pair(data: Any) -> bool:
    """Supervised data: a tuple or list of two tensors ``(x, y)``."""
    return (isinstance(data, tuple | list) and not isinstance(data, StepData) and len(data) == 2
            and all(isinstance(t, Tensor) for t in data))


def _described(data: Any) -> str:
    if isinstance(data, tuple | list):
        return f"a {type(data).__name__} of length {len(data)}"
    return "a tensor" if isinstance(data, Tensor) else f"a {type(data).__name__}"


def supervised_pair(data: Any) -> tuple[Tensor, Tensor]:
    """One task's ``(x, y)``, or one sentence: unpacking a bare tensor of two examples would
    silently take its rows for x and y. ``x`` may be any input of the model (a tuple or dict of
    tensors for a model of several inputs: ``task_loss.model_arguments``)."""
    if not isinstance(data, tuple | list) or isinstance(data, StepData) or len(data) != 2:
        raise ValueError("A (prediction, target) loss needs each task's data as an (x, y) pair: "
                         "pass TaskBatch(support=(x, y), query=(x, y)) and learner.adapt(x, y); "
                         f"got {_described(data)}.")
    x, y = data
    return x, y


def _check_bare_tensor(support: Any, query: Any) -> None:
    """A bare tensor on one side where the other is an (x, y) pair."""
    for name, data, other in (("support", support, query), ("query", query, support)):
        if isinstance(data, Tensor) and _is_pair(other):
            other_name = "query" if name == "support" else "support"
            raise ValueError(f"TaskBatch {name} must be an (x, y) pair like {other_name}; got "
                             f"a tensor of shape {list(data.shape)}.")


def _inputs(x: Any) -> list[tuple[str, Tensor]]:
    """The tensors of an input ``x`` by how to name them: ``x``, ``x[1]``, ``x['aux']``."""
    if isinstance(x, Tensor):
        return [("x", x)]
    if type(x) is tuple:
        return [(f"x[{i}]", t) for i, t in enumerate(x) if isinstance(t, Tensor)]
    if isinstance(x, dict):
        return [(f"x[{k!r}]", t) for k, t in x.items() if isinstance(t, Tensor)]
    return []


def _check_pair(name: str, pair: Any) -> None:
    """Supervised data ``(x, y)``: the same number of examples per task in x (each of its
    tensors, for a model of several inputs) and y."""
    if type(pair) is not tuple or len(pair) != 2 or not isinstance(pair[1], Tensor):
        return
    y = pair[1]
    for what, x in _inputs(pair[0]):
        if x.dim() >= 2 and y.dim() >= 2 and x.shape[:2] != y.shape[:2]:
            raise ValueError(f"TaskBatch {name} {what} has shape {list(x.shape)} but y "
                             f"{list(y.shape)}: {what} holds {x.shape[1]} examples per task and "
                             f"y {y.shape[1]}; they must agree ([tasks, shots, ...] both).")


@dataclass(frozen=True)
class TaskBatch:
    """Support and query data of several tasks, stacked on a leading task dimension.

    ``support = (x, y)`` and ``query = (x, y)`` with shapes ``[tasks, shots, ...]`` for
    supervised tasks; ``x`` of a model of several inputs is a tuple (positional arguments,
    ``forward(x, aux)``) or a dict (keyword arguments) of such tensors; any pytree of tensors
    (a batch of episodes, ``StepData`` with one entry per inner step) for others. ``loss`` is
    the task loss when the tasks bring their own (imitation, policy gradient); ``None`` leaves it
    to the learner.
    """

    support: Any
    query: Any
    loss: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.support, tuple | list) and not isinstance(self.support, StepData) \
                and len(self.support) != 2 and all(isinstance(t, Tensor) for t in self.support):
            raise ValueError("TaskBatch needs support=(x, y) and query=(x, y), where x of a model "
                             "of several inputs is a tuple or dict: ((x, aux), y).")
        _check_bare_tensor(self.support, self.query)
        for name, pair in (("support", self.support), ("query", self.query)):
            _check_pair(name, pair)
        tensors = leaves((self.support, self.query))
        n = tensors[0].shape[0] if tensors and tensors[0].dim() > 0 else None
        if n is None or any(t.dim() == 0 or t.shape[0] != n for t in tensors):
            shapes = [tuple(t.shape) for t in tensors]
            raise ValueError(
                f"TaskBatch tensors must share a leading task dimension; got shapes {shapes}."
            )

    @property
    def num_tasks(self) -> int:
        return leaves(self.support)[0].shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        move = lambda t: t.to(device) if isinstance(t, Tensor) else t  # noqa: E731
        return TaskBatch(pytree.tree_map(move, self.support), pytree.tree_map(move, self.query),
                         self.loss)

    def __getitem__(self, index: int | slice) -> TaskBatch:
        """Tasks ``index`` as a smaller batch; an integer keeps a task dimension of 1."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TaskBatch(take(self.support, index), take(self.query, index), self.loss)


__all__ = ["StepData", "TaskBatch", "leaves", "supervised_pair", "support_at", "take"]
