"""Meta-batches split over processes with ``torch.distributed`` (started by ``torchrun``).

Every rank samples the same whole meta-batch from the same generator and keeps its own slice
(``shard``), so task sampling is identical to one process; each rank back-propagates the mean
loss of its slice and ``average_gradients`` all-reduces ``grad * (slice / meta-batch)``, which is
exactly the one-process mean even when the meta-batch does not divide by the world size. Only
rank 0 writes files (``is_main``). gloo on CPU, NCCL for CUDA tensors, chosen automatically.

These are plain functions of the process group, with no knowledge of the training loop, so that
other loops (meta-RL) can call them too. Without ``torchrun``'s environment variables
(``WORLD_SIZE`` unset or 1) everything here is a no-op for a world of one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` and its rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_context() -> Context:
    """The rank and world size ``torchrun`` put in the environment (one process without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Context(rank=int(os.environ.get("RANK", "0")), world_size=world,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors where CUDA and NCCL are there."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def setup(timeout: timedelta | None = None) -> Context:
    """Join the process group that ``torchrun`` describes (``env://``); idempotent.

    A single process without torchrun's variables gets a world of one and no process group.
    On a GPU machine each rank is pinned to ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    context = env_context()
    if not context.distributed:
        return context
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    if torch.cuda.is_available() and context.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(context.local_rank)
    dist.init_process_group(backend(), init_method="env://", timeout=timeout)
    return current()


def current() -> Context:
    """This process's place in the initialised process group (a world of one if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files."""
    return current().is_main


def local_device(device: torch.device, context: Context | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` for a CUDA run with several processes, ``device`` otherwise."""
    context = context or current()
    if device.type == "cuda" and context.distributed and device.index is None:
        return torch.device("cuda", context.local_rank)
    return device


def shard(total: int, context: Context | None = None) -> slice:
    """This rank's contiguous share of ``total`` items: sizes differ by at most one.

    Ranks beyond ``total`` get an empty slice (their gradients count as zero).
    """
    context = context or current()
    base, extra = divmod(total, context.world_size)
    start = context.rank * base + min(context.rank, extra)
    return slice(start, start + base + (1 if context.rank < extra else 0))


def average_gradients(params: Iterable[Tensor], local_loss: Tensor | float, local_count: int,
                      total_count: int) -> float:
    """All-reduce the gradients of a slice-mean loss into the mean over the whole meta-batch.

    Each rank's ``p.grad`` holds the gradient of the mean loss over its ``local_count`` items;
    afterwards every rank holds ``sum_r grad_r * count_r / total_count`` (missing grads count
    as zero and are filled in). Returns that weighted mean of the losses, the same on every
    rank, so that decisions made from it (a NaN check) agree. One bucket, one all-reduce.
    """
    params = [p for p in params if p.requires_grad]
    weight = local_count / total_count
    loss = float(local_loss) if local_count else 0.0
    if not current().distributed:
        return loss
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    device = grads[0].device if grads else torch.device("cpu")
    flat = torch.cat([*(g.reshape(-1) for g in grads),
                      torch.tensor([loss], dtype=grads[0].dtype if grads else None,
                                   device=device)])
    flat.mul_(weight)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-1].item()


def all_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all ranks, as a new tensor (the tensor itself alone)."""
    if not current().distributed:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (a config, an outcome, a path)."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def agree(flag: bool) -> bool:
    """True on every rank if it is true on any rank (stop together, never hang a collective)."""
    if not current().distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def cleanup(wait: bool = True) -> None:
    """Leave the process group (no-op without one).

    ``wait``: meet every rank at a barrier first, so that no rank tears down its connections
    while a peer still uses them (rank 1 aborted now and then when rank 0 left right after a
    broadcast). Pass False on an error path, where a peer may never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def leave_group_after() -> Iterator[None]:
    """Leave the process group when the block ends: together when it ran through, at once
    when it raised (the peers may never reach the barrier)."""
    try:
        yield
    except BaseException:
        cleanup(wait=False)
        raise
    cleanup()


__all__ = ["Context", "agree", "average_gradients", "backend", "barrier", "broadcast_object",
           "cleanup", "current", "env_context", "is_main", "leave_group_after", "local_device",
           "setup", "shard"]
