"""How to batch second-order MAML over tasks for the conv4 network on CPU: a measured study.

Workload: one meta-step (adapt every task, mean query loss, backward, Adam step) of MAML on
``Conv4(ways=5)`` with Omniglot shapes: 32 tasks, 5-way 1-shot, 5 support and 75 query images of
1x28x28, cross-entropy; 1 inner step (alpha 0.4) or more (alpha 0.1), second or first order.

Variants (all exact; the gradient check runs first, in float64, against the plain loop):
  plain          a plain PyTorch loop over tasks, autograd.grad(create_graph=True): the reference
  loop           mamlkit batching="loop" (torch.func.grad per task)
  vmap, vmap-c8, vmap-c4
                 mamlkit batching="vmap" (chunk_size 8, 4): per-task weights make grouped NCHW
                 convolutions; the first step's support forward shares theta, so vmap folds the
                 tasks into the batch dimension there (idea g) without being asked
  unfold-vmap-c8 every conv as unfold (im2col) + matmul, so vmap turns it into bmm (idea e)
  loop-cl        the plain loop on a Conv4 with channels-last activations and a cheaper exact
                 batch norm (sums, one centring, no var kernel) (idea h, layout)
  mkldnn-off     the plain loop with torch.backends.mkldnn disabled (idea h)
  stacked, stacked-c2, stacked-c8, stacked-c32
                 mamlkit batching="stacked" (what Conv4 gets by default): tasks folded into
                 channels, one grouped convolution per layer (groups=tasks), fused batch norm,
                 per-task gradients from autograd.grad of the summed task losses; channels-last
                 for the query sets, NCHW for the 5-image support sets; 4 tasks per call unless
                 -cN says otherwise (idea f)
  stacked-nchw, stacked-cl
                 the same with NCHW, or channels-last, activations for every batch (idea h)
  compile        the plain loop on torch.compile(model): only with --compile; second order fails
                 ("aot_autograd does not currently support double backward"), which is reported

Timing interleaves the variants in one process (A, B, C, A, B, C, ...) and reports medians, since
other processes may load the machine. Peak memory (--memory) is measured in a fresh subprocess per
variant: the peak RSS during its first meta-step minus the RSS before it (tracemalloc cannot see
torch's CPU allocations).

    python benchmarks/conv_batching.py --threads 1 --steps 1
    python benchmarks/conv_batching.py --threads 2 --steps 5 --first-order --repeats 3 --memory
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mamlkit import MAML, TaskBatch
from mamlkit.models import Conv4, TaskBatchNorm
from mamlkit.run.memory import PeakMemory, rss_mb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stacking_paths import HandStackedConv4  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Model variants (same parameters and names as Conv4, so one state dict fits all of them)


class UnfoldConv2d(nn.Conv2d):
    """A conv as unfold + one matmul: under vmap per-task weights give bmm, not grouped conv."""

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [C*kh*kw, N*L]
        out = self.weight.flatten(1) @ cols + self.bias[:, None]  # [O, N*L]
        return out.view(-1, n, ho, wo).transpose(0, 1)


class TwoPassBatchNorm(TaskBatchNorm):
    """TaskBatchNorm's function with fewer full-size passes: sums, one centring, no var kernel."""

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        inv_n = 1.0 / (x.numel() // x.shape[1])
        centred = x - x.sum(dim=dims, keepdim=True) * inv_n
        var = (centred * centred).sum(dim=dims, keepdim=True) * inv_n
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(shape)
        return torch.addcmul(self.bias.view(shape), centred, scale)


class ChannelsLastConv4(Conv4):
    """Conv4 with channels-last activations after the first conv (which has one input channel)."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.features[0](x)
        h = h.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        return self.head(self.features[1:](h).flatten(start_dim=1))


class NCHWStackedConv4(HandStackedConv4):
    """Task stacking with NCHW activations for every batch."""

    channels_last = False


class ChannelsLastStackedConv4(HandStackedConv4):
    """Task stacking with channels-last activations for every batch, support sets included."""

    channels_last = True


def convert(model: Conv4, conv: type[nn.Conv2d] | None = None,
            bn: type[TaskBatchNorm] | None = None, cls: type[Conv4] | None = None) -> Conv4:
    """A copy of ``model`` with other conv / batch-norm / model classes and the same weights."""
    out = copy.deepcopy(model)
    for i, layer in enumerate(out.features):
        if conv is not None and isinstance(layer, nn.Conv2d):
            new = conv(layer.in_channels, layer.out_channels, layer.kernel_size,
                       stride=layer.stride, padding=layer.padding)
        elif bn is not None and isinstance(layer, TaskBatchNorm):
            new = bn(layer.num_features, layer.eps)
        else:
            continue
        new.load_state_dict(layer.state_dict())
        out.features[i] = new.to(layer.weight.dtype)
    if cls is not None:
        out.__class__ = cls
    return out


# ---------------------------------------------------------------------------------------------
# Meta-losses


@dataclass(frozen=True)
class Setup:
    steps: int
    inner_lr: float
    first_order: bool


def plain_meta_loss(model: nn.Module, batch: TaskBatch, setup: Setup) -> Tensor:
    """The reference: a Python loop over tasks with torch.autograd.grad."""
    params = dict(model.named_parameters())
    losses = []
    for i in range(batch.num_tasks):
        (sx, sy), (qx, qy) = (t[i] for t in batch.support), (t[i] for t in batch.query)
        fast = dict(params)
        for _ in range(setup.steps):
            loss = F.cross_entropy(functional_call(model, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()),
                                        create_graph=not setup.first_order)
            fast = {n: p - setup.inner_lr * g for (n, p), g in zip(fast.items(), grads,
                                                                   strict=True)}
        losses.append(F.cross_entropy(functional_call(model, fast, (qx,)), qy))
    return torch.stack(losses).mean()


def library(batching: str, chunk: int | None = None) -> Callable[[nn.Module, TaskBatch, Setup],
                                                                   Tensor]:
    def meta_loss(model: nn.Module, batch: TaskBatch, setup: Setup) -> Tensor:
        learner = MAML(model, setup.inner_lr, setup.steps, setup.first_order, "cross_entropy",
                       batching=batching, chunk_size=chunk)
        return learner.meta_loss(batch)

    return meta_loss


@dataclass(frozen=True)
class Variant:
    name: str
    make_model: Callable[[Conv4], nn.Module]
    meta_loss: Callable[[nn.Module, TaskBatch, Setup], Tensor]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def variants(with_compile: bool) -> dict[str, Variant]:
    same = lambda m: copy.deepcopy(m)  # noqa: E731
    out = [
        Variant("plain", same, plain_meta_loss),
        Variant("loop", same, library("loop")),
        Variant("vmap", same, library("vmap")),
        Variant("vmap-c8", same, library("vmap", 8)),
        Variant("vmap-c4", same, library("vmap", 4)),
        Variant("unfold-vmap-c8", lambda m: convert(m, conv=UnfoldConv2d), library("vmap", 8)),
        Variant("loop-cl", lambda m: convert(m, bn=TwoPassBatchNorm, cls=ChannelsLastConv4),
                plain_meta_loss),
        Variant("mkldnn-off", same, plain_meta_loss,
                lambda: torch.backends.mkldnn.flags(enabled=False)),
        Variant("stacked-nchw", lambda m: convert(m, cls=NCHWStackedConv4), library("stacked")),
        Variant("stacked-cl", lambda m: convert(m, cls=ChannelsLastStackedConv4),
                library("stacked")),
        Variant("stacked-c2", same, library("stacked", 2)),
        Variant("stacked", same, library("stacked")),
        Variant("stacked-c8", same, library("stacked", 8)),
        Variant("stacked-c32", same, library("stacked", 32)),
    ]
    if with_compile:
        out.append(Variant("compile", lambda m: torch.compile(copy.deepcopy(m)),
                           plain_meta_loss))
    return {v.name: v for v in out}


# ---------------------------------------------------------------------------------------------
# Workload, check, timing, memory


def omniglot_batch(tasks: int, dtype: torch.dtype, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(5).repeat(16).expand(tasks, 80).clone()
    x = torch.rand(tasks, 80, 1, 28, 28, generator=g, dtype=dtype)
    return TaskBatch((x[:, :5], y[:, :5]), (x[:, 5:], y[:, 5:]))


def base_model(dtype: torch.dtype) -> Conv4:
    torch.manual_seed(0)
    return Conv4(ways=5).to(dtype)


def parameters_of(model: nn.Module) -> list[Tensor]:
    inner = getattr(model, "_orig_mod", model)
    return list(inner.parameters())


def meta_gradient(variant: Variant, model: nn.Module, batch: TaskBatch, setup: Setup
                  ) -> list[Tensor]:
    with variant.context():
        return list(torch.autograd.grad(variant.meta_loss(model, batch, setup),
                                        parameters_of(model)))


def check(chosen: dict[str, Variant], setup: Setup, tasks: int) -> dict[str, str]:
    """Max |g - g_plain| / max |g_plain| of every variant's float64 meta-gradient."""
    base, batch = base_model(torch.float64), omniglot_batch(tasks, torch.float64)
    reference = meta_gradient(chosen["plain"], base, batch, setup)
    scale = max(g.abs().max() for g in reference)
    verdict = {}
    for name, variant in chosen.items():
        try:
            grads = meta_gradient(variant, variant.make_model(base), batch, setup)
        except Exception as error:  # noqa: BLE001 - a failing variant is a result
            verdict[name] = f"fails: {type(error).__name__}: {str(error).splitlines()[0][:90]}"
            continue
        diff = max(((a - b).abs().max() / scale).item() for a, b in zip(grads, reference,
                                                                        strict=True))
        verdict[name] = f"{diff:.1e}" + ("" if diff < 1e-10 else "  INEXACT")
    return verdict


def meta_step(variant: Variant, model: nn.Module, optimizer: torch.optim.Optimizer,
              batch: TaskBatch, setup: Setup) -> None:
    optimizer.zero_grad(set_to_none=True)
    with variant.context():
        variant.meta_loss(model, batch, setup).backward()
    optimizer.step()


def time_variants(chosen: dict[str, Variant], setup: Setup, tasks: int, repeats: int
                  ) -> dict[str, float]:
    base, batch = base_model(torch.float32), omniglot_batch(tasks, torch.float32)
    runs = {}
    for name, variant in chosen.items():
        model = variant.make_model(base)
        runs[name] = (model, torch.optim.Adam(parameters_of(model), lr=1e-3))
        meta_step(variant, *runs[name], batch, setup)  # warm-up (and compilation)
    times: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(repeats):
        for name, variant in chosen.items():
            start = time.perf_counter()
            meta_step(variant, *runs[name], batch, setup)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def peak_memory_mb(name: str, args: argparse.Namespace) -> float | None:
    """Peak RSS of one meta-step above the RSS before it, in a fresh process."""
    command = [sys.executable, __file__, "--memory-child", name, "--steps", str(args.steps),
               "--threads", str(args.threads), "--tasks", str(args.tasks)]
    command += ["--first-order"] if args.first_order else []
    command += ["--compile"] if args.compile else []
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
    except (IndexError, KeyError, json.JSONDecodeError):
        return None


def memory_child(name: str, setup: Setup, tasks: int, with_compile: bool) -> None:
    variant = variants(with_compile)[name]
    base, batch = base_model(torch.float32), omniglot_batch(tasks, torch.float32)
    model = variant.make_model(base)
    optimizer = torch.optim.Adam(parameters_of(model), lr=1e-3)
    if name == "compile":  # compile outside the measured step
        meta_step(variant, model, optimizer, batch, setup)
    before = rss_mb()
    peak = PeakMemory(torch.device("cpu"))  # VmHWM from here on
    meta_step(variant, model, optimizer, batch, setup)
    print(json.dumps({"peak_mb": peak.read() - before}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="inner steps (alpha 0.4 for 1, "
                        "else 0.1)")
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="timed meta-steps per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--tasks", type=int, default=32, help="meta-batch size")
    parser.add_argument("--check-tasks", type=int, default=4,
                        help="tasks in the float64 gradient check")
    parser.add_argument("--variants", default="all", help="comma-separated names, or all")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak memory (one subprocess per variant)")
    parser.add_argument("--compile", action="store_true", help="include torch.compile")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup = Setup(args.steps, 0.4 if args.steps == 1 else 0.1, args.first_order)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, setup, args.tasks, args.compile)
        return
    every = variants(args.compile)
    names = list(every) if args.variants == "all" else ["plain", *(
        n for n in args.variants.split(",") if n != "plain")]
    unknown = [n for n in names if n not in every]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(every)}")
    chosen = {n: every[n] for n in names}
    order = "first" if args.first_order else "second"
    print(f"conv4, {args.tasks} tasks 5-way 1-shot (5 support + 75 query of 1x28x28), "
          f"{args.steps} inner step(s), alpha {setup.inner_lr}, {order} order, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    verdict = check(chosen, setup, args.check_tasks)
    print(f"gradient check (float64, {args.check_tasks} tasks, max |g - g_plain| / max |g_plain|,"
          " must be < 1e-10):")
    for name, v in verdict.items():
        print(f"  {name:15s} {v}")
    timed = {n: v for n, v in chosen.items() if not verdict[n].startswith("fails")
             and "INEXACT" not in verdict[n]}
    ms = time_variants(timed, setup, args.tasks, args.repeats)
    memory = {n: peak_memory_mb(n, args) for n in timed} if args.memory else {}
    print(f"\n{'variant':15s} {'median ms':>10s} {'peak MB':>8s} {'vs plain':>9s}")
    for name in timed:
        mb = memory.get(name)
        mb_text = "-" if mb is None else f"{mb:.0f}"
        print(f"{name:15s} {ms[name]:10.0f} {mb_text:>8s} {ms['plain'] / ms[name]:8.2f}x")


if __name__ == "__main__":
    main()
