"""Meta-step time and memory for models of standard layers: mamlkit, a plain loop, learn2learn.

A meta-step adapts every task of the meta-batch (second order), takes the query loss, runs the
backward pass and an Adam step. Workloads: (a) a user's conv4 written as ``nn.Sequential`` with
stock ``nn.BatchNorm2d`` (mamlkit stacks it through ``models/stacking.py``), (c) mamlkit's
``Conv4`` (its hand-written stacked path), (b) ResNet-12 (``models/resnet12.py``, stacked through
``models/stacking.py``). Each runs with mamlkit's ``auto`` batching, the plain per-task loop
that calls ``backward`` after every task (as the peers' examples write it) and learn2learn (the
same, through ``MAML.clone``/``adapt``), side by side in one process, interleaved, medians; a
float64 check of every meta-gradient against the plain loop's comes first. Peak memory is the
resident-set growth of one step in a fresh process per implementation.

The ceiling: a plain forward + backward of the same network on all the meta-batch's images at
once, without meta-learning, in GFLOP/s of convolution (``torch.utils.flop_counter``). Each
meta-step's convolution FLOPs (counted on the plain loop) over its time, as a fraction of that,
says how close to what the CPU can do for these convolutions the step runs.

    bash benchmarks/install_peers.sh          # learn2learn (and higher)
    python benchmarks/any_model.py --workload conv4-seq-1 conv4-1 --memory
    python benchmarks/any_model.py --workload resnet12-1 --repeats 3 --warmup 1 --memory

On a GPU (``--device cuda``) steps are timed between ``torch.cuda.synchronize`` calls, peak memory
is the allocator's peak above what was allocated before the step, and ``--batchings stacked vmap``
adds rows of mamlkit with that batching forced (``auto`` on a GPU keeps a stock-BN network in a
loop); such a row whose float64 meta-gradient disagrees with the plain loop is reported and not
timed (vmap over stock batch norm is inexact at second order).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

from mamlkit import MAML, TaskBatch  # noqa: E402
from mamlkit.models import Conv4, ResNet12, TaskBatchNorm  # noqa: E402
from mamlkit.run.memory import PeakMemory, rss_mb  # noqa: E402

CHUNKS: list[int] = []  # --chunk-sizes: extra mamlkit rows
BATCHINGS: list[str] = []  # --batchings: extra mamlkit rows with a forced batching
DEVICE = torch.device("cpu")
TASKS: int | None = None  # --tasks: the first N tasks of every meta-batch (quick runs)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def batch_of(work: Workload, seed: int) -> TaskBatch:
    """The workload's meta-batch on DEVICE (its first TASKS tasks, if set)."""
    batch = work.make_batch(seed)
    return (batch if TASKS is None else batch[:TASKS]).to(DEVICE)


def conv4_sequential(ways: int = 5, hidden: int = 64, running_stats: bool = True
                     ) -> nn.Sequential:
    """Conv4 as a user writes it: strided 3x3 convs (stride 2, padding 1), stock batch norm
    (default: with running statistics; learn2learn's own Omniglot CNN has none)."""
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(4):
        layers += [nn.Conv2d(channels, hidden, 3, stride=2, padding=1),
                   nn.BatchNorm2d(hidden, track_running_stats=running_stats), nn.ReLU()]
        channels = hidden
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(hidden * 2 * 2, ways))


def image_batch(tasks: int, channels: int, size: int, seed: int, ways: int = 5, shots: int = 1,
                queries: int = 15) -> TaskBatch:
    """Random images with balanced labels: the shapes of 5-way 1-shot tasks, 75 queries."""
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone()
    query_y = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone()
    return TaskBatch(
        (torch.rand(tasks, ways * shots, channels, size, size, generator=g), support_y),
        (torch.rand(tasks, ways * queries, channels, size, size, generator=g), query_y))


@dataclass(frozen=True)
class Workload:
    name: str
    make_model: Callable[[], nn.Module]
    make_batch: Callable[[int], TaskBatch]
    inner_lr: float
    steps: int
    ceiling_images: int | None = None  # images in the ceiling's training step (None: all)


def _omniglot(seed: int) -> TaskBatch:
    return image_batch(32, 1, 28, seed)


def _mini(seed: int) -> TaskBatch:
    return image_batch(4, 3, 84, seed)


WORKLOADS = {
    "conv4-seq-1": Workload("(a) conv4 nn.Sequential + stock BN, 5w1s 32 tasks, 1 step",
                            conv4_sequential, _omniglot, 0.4, 1),
    "conv4-seq-5": Workload("(a) conv4 nn.Sequential + stock BN, 5w1s 32 tasks, 5 steps",
                            conv4_sequential, _omniglot, 0.1, 5),
    "conv4-seq-nostats-1": Workload(
        "(a') the same, BatchNorm2d(track_running_stats=False), 1 step",
        functools.partial(conv4_sequential, running_stats=False), _omniglot, 0.4, 1),
    "conv4-1": Workload("(c) mamlkit Conv4, 5w1s 32 tasks, 1 step", lambda: Conv4(5),
                        _omniglot, 0.4, 1),
    "conv4-5": Workload("(c) mamlkit Conv4, 5w1s 32 tasks, 5 steps", lambda: Conv4(5),
                        _omniglot, 0.1, 5),
    "resnet12-1": Workload("(b) ResNet-12 84x84, 5w1s 4 tasks, 1 step", lambda: ResNet12(5),
                           _mini, 0.01, 1, ceiling_images=80),
}


# --- implementations: each makes step(batch), leaving the meta-gradient in .grad ------------

Step = Callable[[TaskBatch], None]
Maker = Callable[[nn.Module, Workload], Step]


def mamlkit_step(model: nn.Module, work: Workload, chunk_size: int | None = None,
                 batching: str = "auto") -> Step:
    learner = MAML(model, work.inner_lr, work.steps, loss_fn="cross_entropy",
                   batching=batching, chunk_size=chunk_size)

    def step(batch: TaskBatch) -> None:
        learner.meta_loss(batch).backward()

    step.batching = learner.batching  # type: ignore[attr-defined]
    return step


def plain_loop_step(model: nn.Module, work: Workload) -> Step:
    """Adapt one task, backward its share of the query loss, next task (graphs freed each)."""
    params = dict(model.named_parameters())

    def step(batch: TaskBatch) -> None:
        (sx, sy), (qx, qy) = batch.support, batch.query
        tasks = sx.shape[0]
        for t in range(tasks):
            fast = params
            for _ in range(work.steps):
                loss = F.cross_entropy(functional_call(model, fast, (sx[t],)), sy[t])
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {n: p - work.inner_lr * g
                        for (n, p), g in zip(fast.items(), grads, strict=True)}
            (F.cross_entropy(functional_call(model, fast, (qx[t],)), qy[t]) / tasks).backward()

    return step


def learn2learn_step(model: nn.Module, work: Workload) -> Step:
    """learn2learn's MAML wrapper as its examples use it: clone, adapt, backward per task."""
    maml = peers._load_l2l_maml()(model, lr=work.inner_lr, first_order=False)

    def step(batch: TaskBatch) -> None:
        (sx, sy), (qx, qy) = batch.support, batch.query
        tasks = sx.shape[0]
        for t in range(tasks):
            learner = maml.clone()
            for _ in range(work.steps):
                learner.adapt(F.cross_entropy(learner(sx[t]), sy[t]))
            (F.cross_entropy(learner(qx[t]), qy[t]) / tasks).backward()

    return step


def implementations(chunk_sizes: Sequence[int] = (), batchings: Sequence[str] = ()
                    ) -> dict[str, Maker]:
    """mamlkit (``auto``; also with each of ``chunk_sizes`` and ``batchings``), the plain loop,
    learn2learn."""
    impls: dict[str, Maker] = {"mamlkit auto": mamlkit_step, "plain loop": plain_loop_step}
    for size in chunk_sizes:
        impls[f"mamlkit chunk_size={size}"] = functools.partial(mamlkit_step, chunk_size=size)
    for batching in batchings:
        impls[f"mamlkit {batching}"] = functools.partial(mamlkit_step, batching=batching)
    problem = peers.available_peers().get("learn2learn")
    if problem is None:
        impls["learn2learn"] = learn2learn_step
    else:
        print(f"# learn2learn skipped: {problem}")
    return impls


def check_gradients(work: Workload, impls, tasks: int | None = None) -> list[str]:
    """Every meta-gradient must match the plain loop's in float64 (1e-9 relative) first.

    A forced-batching row (``--batchings``) that fails (raises or disagrees) is returned, to be
    left out of the timing; any other disagreement stops the benchmark."""
    base = work.make_model().to(DEVICE).double()
    batch = peers.double_batch(batch_of(work, 123))
    batch = batch if tasks is None else batch[:tasks]
    grads, dropped = {}, []
    forced = {f"mamlkit {b}" for b in BATCHINGS}
    for name, make in impls.items():
        model = copy.deepcopy(base)
        try:
            make(model, work)(batch)
        except Exception as error:
            if name not in forced:
                raise
            print(f"# {name} fails ({type(error).__name__}: {str(error)[:120]}); not timed")
            dropped.append(name)
            continue
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    reference = grads["plain loop"]
    scale = reference.abs().max().item()
    for name in [n for n in grads if n in forced]:
        error = (grads.pop(name) - reference).abs().max().item()
        if error > 1e-9 * max(scale, 1e-6):
            print(f"# float64 gradient check {name} max |diff| {error:.1e} (largest "
                  f"{scale:.1e}) MISMATCH: not timed")
            dropped.append(name)
        else:
            print(f"# float64 gradient check {name} max |diff| {error:.1e} ok")
    peers.check_against_plain_loop(grads)
    return dropped


# --- timing, memory, the ceiling --------------------------------------------------------------

def time_steps(work: Workload, impls, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per meta-step of every implementation, interleaved (A, B, C, A, B, C, ...)."""
    base = work.make_model().to(DEVICE)
    steps, optimizers = {}, {}
    for name, make in impls.items():
        model = copy.deepcopy(base)
        steps[name] = make(model, work)  # before the optimiser: batch norm may be replaced
        optimizers[name] = torch.optim.Adam(model.parameters(), lr=1e-3)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(warmup + repeats):
        batch = batch_of(work, r)
        for name in impls:
            _sync()
            start = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            steps[name](batch)
            optimizers[name].step()
            _sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def peak_memory_child(key: str, impl: str) -> None:
    """In a fresh process: the peak resident-set growth of one meta-step, in MB."""
    work = WORKLOADS[key]
    model, batch = work.make_model().to(DEVICE), batch_of(work, 0)
    step = implementations(CHUNKS, BATCHINGS)[impl](model, work)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    cuda = DEVICE.type == "cuda"
    before = torch.cuda.memory_allocated(DEVICE) / 2**20 if cuda else rss_mb()
    peak = PeakMemory(DEVICE)  # VmHWM (CPU) or the allocator's peak (CUDA) from here on
    step(batch)
    optimizer.step()
    print(json.dumps({"peak_mb": peak.read() - before}))


def cuda_peak_memory(work: Workload, make: Maker) -> float:
    """The allocator's peak above what was allocated before one meta-step, in MB, in this
    process (CUDA's counters, unlike the resident set, see only this step's tensors)."""
    model = work.make_model().to(DEVICE)
    step = make(model, work)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = batch_of(work, 0)
    _sync()
    before = torch.cuda.memory_allocated(DEVICE) / 2**20
    peak = PeakMemory(DEVICE)
    step(batch)
    optimizer.step()
    _sync()
    return peak.read() - before


def peak_memory(key: str, impl: str) -> float:
    chunks = [str(c) for c in CHUNKS]
    tasks = ["--tasks", str(TASKS)] if TASKS else []
    out = subprocess.run([sys.executable, __file__, "--child-memory", key, impl,
                          "--chunk-sizes", *chunks, "--batchings", *BATCHINGS,
                          "--device", str(DEVICE), *tasks], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def conv_flops(fn: Callable[[], None]) -> float:
    """Convolution FLOPs (forward and every backward) that ``fn`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    counts = counter.get_flop_counts()["Global"]
    return float(sum(v for op, v in counts.items() if "convolution" in str(op)))


def step_flops(work: Workload) -> float:
    """Convolution FLOPs of one meta-step, counted on the plain loop (one task, times tasks)."""
    batch = batch_of(work, 0)
    step = plain_loop_step(work.make_model().to(DEVICE), work)
    return conv_flops(lambda: step(batch[:1])) * batch.num_tasks


def stock_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` with ``TaskBatchNorm`` swapped for stock ``nn.BatchNorm`` (fused kernels)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, TaskBatchNorm):
                bn = nn.BatchNorm2d(child.num_features, child.eps, track_running_stats=False)
                setattr(module, name, bn)
    return model


def train_gflops(model: nn.Module, x: Tensor, y: Tensor, repeats: int) -> float:
    """GFLOP/s of convolution of plain training steps (forward, backward) of ``model``."""
    def once() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    flops = conv_flops(once)
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        once()
        _sync()
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


def ceiling(work: Workload, repeats: int) -> float:
    """GFLOP/s of convolution of a plain training step of the same network (stock batch norm)
    on the meta-batch's images in one batch (all, or ``ceiling_images``), no meta-learning,
    NCHW or channels-last, whichever is faster: what this CPU does at most for these convs."""
    model, batch = stock_batch_norm(work.make_model()).to(DEVICE), batch_of(work, 0)
    x = torch.cat([batch.support[0].flatten(0, 1), batch.query[0].flatten(0, 1)])
    y = torch.cat([batch.support[1].flatten(0, 1), batch.query[1].flatten(0, 1)])
    x, y = x[:work.ceiling_images], y[:work.ceiling_images]
    return max(train_gflops(model.to(memory_format=layout), x.contiguous(memory_format=layout),
                            y, repeats)
               for layout in (torch.contiguous_format, torch.channels_last))


def run_workload(key: str, args: argparse.Namespace) -> list[dict]:
    work = WORKLOADS[key]
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "1 thread"
    tasks = f", first {TASKS} tasks" if TASKS else ""
    print(f"\n## {work.name}{tasks}, 2nd order, {where}, median of {args.repeats}", flush=True)
    impls = implementations(CHUNKS, BATCHINGS)
    for name in check_gradients(work, impls, args.check_tasks):
        impls.pop(name)
    times = time_steps(work, impls, args.repeats, args.warmup)
    peak = ceiling(work, max(3, args.repeats // 2))
    flops = step_flops(work)
    print(f"# ceiling: plain forward + backward {peak:.1f} GFLOP/s of convolution; "
          f"meta-step {flops / 1e9:.1f} GFLOP of convolution")
    medians = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    rows = []
    for name, ms in medians.items():
        rows.append({
            "workload": work.name + tasks, "device": where, "implementation": name, "ms": ms,
            "vs_plain": medians["plain loop"] / ms,
            "vs_l2l": medians["learn2learn"] / ms if "learn2learn" in medians else None,
            "of_ceiling": flops / (ms / 1e3) / 1e9 / peak,
            "peak_mb": None if not args.memory else cuda_peak_memory(work, impls[name])
            if DEVICE.type == "cuda" else peak_memory(key, name),
            "times_ms": [t * 1e3 for t in times[name]]})
        print(table([rows[-1]], header=False), flush=True)
    return rows


def table(rows: list[dict], header: bool = True) -> str:
    lines = ["| workload | implementation | ms / step (median) | vs plain loop | vs learn2learn "
             "| of conv ceiling | peak MB |", "|---|---|---|---|---|---|---|"] if header else []
    for r in rows:
        l2l = f"{r['vs_l2l']:.2f}x" if r["vs_l2l"] else "-"
        mem = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        lines.append(f"| {r['workload']} | {r['implementation']} | {r['ms']:.0f} | "
                     f"{r['vs_plain']:.2f}x | {l2l} | {100 * r['of_ceiling']:.0f}% | {mem} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs="+", choices=list(WORKLOADS),
                        default=["conv4-seq-1", "conv4-seq-5", "conv4-1", "conv4-5"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--check-tasks", type=int, help="tasks in the float64 check (all)")
    parser.add_argument("--memory", action="store_true", help="peak memory, fresh processes")
    parser.add_argument("--json", type=Path, help="append the rows to this JSON file")
    parser.add_argument("--chunk-sizes", nargs="*", type=int, default=[],
                        help="also mamlkit with these chunk sizes")
    parser.add_argument("--batchings", nargs="*", default=[],
                        choices=["auto", "vmap", "loop", "stacked"],
                        help="also mamlkit with each of these batchings forced")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tasks", type=int, help="only the first N tasks of each meta-batch")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    global DEVICE, TASKS
    DEVICE, TASKS = torch.device(args.device), args.tasks
    CHUNKS[:] = args.chunk_sizes
    BATCHINGS[:] = args.batchings
    if args.child_memory:
        peak_memory_child(*args.child_memory)
        return
    old = json.loads(args.json.read_text()) if args.json and args.json.is_file() else []
    rows: list[dict] = []
    for key in args.workload:
        rows += run_workload(key, args)
        # after every workload: a run stopped by a time limit keeps what it measured
        if args.json:
            args.json.write_text(json.dumps(old + rows, indent=1) + "\n")
        if args.markdown:
            args.markdown.write_text(table(rows) + "\n")
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
