"""Conv4's task stacking: the derived path against the former hand-written one, and the memory of
the first-order stacked meta-loss with and without the chunk-by-chunk backward.

Workload: one meta-step (meta-loss, backward, Adam step) of MAML on ``Conv4(5, hidden=64)`` with
Omniglot 5-way 1-shot shapes: 32 tasks, 5 support and 75 query images of 1x28x28, 1 inner step.

``--study paths`` (second order): ``derived`` is what ``Conv4`` runs now (``models/stacking.py``);
``hand-written`` is the stacked forward Conv4 carried before (a copy below, ``HandStackedConv4``),
both with 4 tasks per call. Their losses and meta-gradients are compared bit for bit first.

``--study first-order``: ``chunked`` is the learner's stacked meta-loss (each chunk of 4 tasks
back-propagated at once, its graph freed); ``whole graph`` the same stacked meta-loss keeping
every chunk's graph until ``backward`` (as before); ``per-task loop`` a plain PyTorch loop that
calls ``backward`` after each task.

Side by side in one process, interleaved (A, B, A, B, ...), medians. Peak memory: resident-set
growth over one meta-step (``VmHWM`` reset through ``/proc/self/clear_refs``, freed heap given
back with ``malloc_trim`` before each step).

    python benchmarks/stacking_paths.py --study paths --repeats 5
    python benchmarks/stacking_paths.py --study first-order --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit import MAML, TaskBatch
from mamlkit import functional as MF
from mamlkit.functional import Batching
from mamlkit.models import Conv4, TaskBatchNorm
from mamlkit.models.task_conv import (
    channels_to_tasks,
    stacked_batch_norm,
    stacked_conv2d,
    stacked_linear,
    tasks_to_channels,
)
from mamlkit.run.memory import PeakMemory, rss_mb


class HandStackedConv4(Conv4):
    """Conv4 with the hand-written stacked forward it carried before the derived path
    (``channels_last``: the activations' layout, None: channels-last for large batches)."""

    supports_task_stacking = True
    channels_last: bool | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.features[0].weight.dim() != 5:
            return super().forward(x)
        tasks = self.features[0].weight.shape[0]
        h = tasks_to_channels(x, self.channels_last)
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                h = stacked_conv2d(h, layer.weight, layer.bias, layer.stride, layer.padding)
            elif isinstance(layer, TaskBatchNorm):
                h = stacked_batch_norm(h, layer.weight, layer.bias, layer.eps)
            elif isinstance(layer, nn.ReLU):
                h = torch.relu_(h)  # batch norm saves its input, not its output
            else:
                h = layer(h)  # max-pooling: per channel, so per task
        return stacked_linear(channels_to_tasks(h, tasks), self.head.weight, self.head.bias)


def omniglot_batch(tasks: int, ways: int = 5, queries: int = 15) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    sy = torch.arange(ways).expand(tasks, -1).clone()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone()
    return TaskBatch((torch.rand(tasks, ways, 1, 28, 28, generator=g), sy),
                     (torch.rand(tasks, ways * queries, 1, 28, 28, generator=g), qy))


def plain_loop_loss(model: nn.Module, batch: TaskBatch, lr: float, first_order: bool) -> Tensor:
    """Backward after every task (the graph of one task at a time); returns the mean loss."""
    params = dict(model.named_parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        (sx, sy), (qx, qy) = (t[i] for t in batch.support), (t[i] for t in batch.query)
        loss = F.cross_entropy(functional_call(model, params, (sx,)), sy)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
        fast = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
        query = F.cross_entropy(functional_call(model, fast, (qx,)), qy) / batch.num_tasks
        query.backward()
        total += query.item()
    return torch.tensor(total)


Step = Callable[[], Tensor]


def variants(study: str, batch: TaskBatch) -> dict[str, tuple[nn.Module, Step]]:
    torch.manual_seed(0)
    model = Conv4(5, hidden=64)
    if study == "paths":
        hand = HandStackedConv4(5, hidden=64)
        hand.load_state_dict(model.state_dict())
        derived = MAML(model, 0.4, 1, False, "cross_entropy")
        written = MAML(hand, 0.4, 1, False, "cross_entropy",
                       Batching("stacked", stacked_forward=MF.forward))
        return {"derived": (derived, lambda: derived.meta_loss(batch)),
                "hand-written": (written, lambda: written.meta_loss(batch))}
    chunked = MAML(model, 0.4, 1, True, "cross_entropy")
    whole = MAML(copy.deepcopy(model), 0.4, 1, True, "cross_entropy")
    loop = copy.deepcopy(model)

    def whole_graph() -> Tensor:
        return MF.meta_loss(whole.model, whole.params(), whole.buffers_dict(), batch,
                            loss=whole.loss_fn, inner=whole.inner_loop(), batching=whole.batching)

    return {"chunked": (chunked, lambda: chunked.meta_loss(batch)),
            "whole graph": (whole, whole_graph),
            "per-task loop": (loop, lambda: plain_loop_loss(loop, batch, 0.4, True))}


def meta_step(module: nn.Module, loss_of: Step, optimizer: torch.optim.Optimizer) -> Tensor:
    optimizer.zero_grad()
    loss = loss_of()
    if loss.requires_grad:
        loss.backward()
    optimizer.step()
    return loss.detach()


def gradients(module: nn.Module, loss_of: Step) -> tuple[Tensor, list[Tensor]]:
    module.zero_grad()
    loss = loss_of()
    if loss.requires_grad:
        loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=["paths", "first-order"], default="paths")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = omniglot_batch(args.tasks)
    runs = variants(args.study, batch)
    names = list(runs)
    checks = {n: gradients(*runs[n]) for n in names}
    ref_loss, ref_grads = checks[names[0]]
    for name in names[1:]:
        loss, grads = checks[name]
        scale = max(g.abs().max().item() for g in ref_grads)
        diff = max((a - b).abs().max().item() for a, b in zip(grads, ref_grads, strict=True))
        print(f"{name} vs {names[0]}: loss equal {torch.equal(loss, ref_loss)}, gradients equal "
              f"{all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))}, "
              f"largest gradient difference {diff / scale:.1e} of the largest gradient")
    optimizers = {n: torch.optim.Adam(runs[n][0].parameters(), 1e-3) for n in names}
    libc = ctypes.CDLL("libc.so.6")
    peak = PeakMemory(torch.device("cpu"))
    times: dict[str, list[float]] = {n: [] for n in names}
    growth: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            libc.malloc_trim(0)
            before = rss_mb()
            peak.reset()
            start = time.perf_counter()
            meta_step(*runs[name], optimizers[name])
            times[name].append(time.perf_counter() - start)
            growth[name].append(peak.read() - before)
    rows = {n: {"ms_median": 1000 * statistics.median(times[n]),
                "peak_growth_mb_median": statistics.median(growth[n]),
                "ms": [round(1000 * t, 1) for t in times[n]],
                "peak_growth_mb": [round(g, 1) for g in growth[n]]} for n in names}
    print(f"| {args.study} | ms / meta-step (median) | peak growth MB (median) |")
    print("|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['ms_median']:.0f} | {row['peak_growth_mb_median']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"study": args.study, "tasks": args.tasks, "threads": args.threads,
                       "repeats": args.repeats, "torch": torch.__version__, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
