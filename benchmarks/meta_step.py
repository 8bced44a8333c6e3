"""Time one MAML meta-training step: mamlkit against a plain PyTorch loop, learn2learn and higher.

A meta-step is: adapt every task of the meta-batch, mean query loss, backward, Adam step. All
implementations run side by side in one process, interleaved (A, B, C, A, B, C, ...), and we
report medians and ratios. Before timing anything, every implementation's meta-gradient is
checked against the plain loop's. Peak memory of one step is measured in a fresh subprocess per
implementation (``--memory``), since torch's CPU allocations are invisible to tracemalloc.

    python benchmarks/meta_step.py                       # all workloads, 1 thread
    python benchmarks/meta_step.py --workload conv4-1 --memory
    bash benchmarks/install_peers.sh                     # to include learn2learn and higher
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

from mamlkit import MAML, Sinusoid, TaskBatch  # noqa: E402
from mamlkit import functional as MF  # noqa: E402
from mamlkit.models import Conv4, mlp  # noqa: E402
from mamlkit.run.memory import PeakMemory, rss_mb  # noqa: E402


@dataclass(frozen=True)
class Workload:
    name: str
    make_model: Callable[[], nn.Module]
    make_batch: Callable[[int], TaskBatch]
    loss: str
    inner_lr: float
    steps: int
    first_order: bool
    sampling_timed: bool = False  # the task sampler runs inside the timed step


def omniglot_shaped_batch(tasks: int, ways: int = 5, shots: int = 1, queries: int = 15,
                          seed: int = 0) -> TaskBatch:
    """Random 28x28 images with balanced labels: the shapes of 5-way 1-shot Omniglot tasks."""
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    query_y = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1)
    return TaskBatch(
        (torch.rand(tasks, ways * shots, 1, 28, 28, generator=g), support_y.clone()),
        (torch.rand(tasks, ways * queries, 1, 28, 28, generator=g), query_y.clone()),
    )


OMNIGLOT_ROOT = Path(os.environ.get(
    "MAMLKIT_OMNIGLOT_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))


def real_omniglot_sampler(ways: int = 5, shots: int = 1, queries: int = 15, tasks: int = 32):
    """Meta-batches from the real Omniglot training split (the zips must be in OMNIGLOT_ROOT)."""
    from mamlkit.tasks import omniglot_tasks

    state: dict = {}

    def sample(seed: int) -> TaskBatch:
        if not state:  # loaded on first use, so other workloads' memory figures don't see it
            state["tasks"] = omniglot_tasks(OMNIGLOT_ROOT, ways, shots, queries, split="train")
            state["generator"] = torch.Generator().manual_seed(0)
        return state["tasks"].sample(tasks, state["generator"])

    return sample


WORKLOADS = {
    "sinusoid": Workload("sinusoid (25 tasks, K=10, 1 step, 2nd order)",
                         lambda: mlp([1, 40, 40, 1]), lambda s: Sinusoid(10).sample(25, s),
                         "mse", 0.01, 1, False),
    "conv4-1": Workload("conv4 5w1s (32 tasks, 5+75 images, 1 step, 2nd order)",
                        lambda: Conv4(ways=5), lambda s: omniglot_shaped_batch(32, seed=s),
                        "cross_entropy", 0.4, 1, False),
    "conv4-5": Workload("conv4 5w1s (32 tasks, 5+75 images, 5 steps, 2nd order)",
                        lambda: Conv4(ways=5), lambda s: omniglot_shaped_batch(32, seed=s),
                        "cross_entropy", 0.1, 5, False),
    "conv4-5-fo": Workload("conv4 5w1s (32 tasks, 5+75 images, 5 steps, 1st order)",
                           lambda: Conv4(ways=5), lambda s: omniglot_shaped_batch(32, seed=s),
                           "cross_entropy", 0.1, 5, True),
}
if (OMNIGLOT_ROOT / "images_background.zip").is_file():
    WORKLOADS["omniglot-5w1s"] = Workload(
        "real Omniglot 5w1s sampled in the step (32 tasks, 5+75 images, 1 step, 2nd order)",
        lambda: Conv4(ways=5), real_omniglot_sampler(), "cross_entropy", 0.4, 1, False, True)
else:
    print(f"# real Omniglot workload skipped: no zips in {OMNIGLOT_ROOT}")


def implementations(work: Workload) -> dict[str, Callable[[nn.Module, TaskBatch], torch.Tensor]]:
    """Name -> function(model, batch) returning the meta-loss (not yet backpropagated)."""
    loss_fn = MF.resolve_loss(work.loss)
    learners: dict[int, MAML] = {}

    def ours(batching: str):
        def run(model, batch):
            learner = learners.setdefault(id(model), MAML(
                model, work.inner_lr, work.steps, work.first_order, work.loss, batching))
            return learner.meta_loss(batch)
        return run

    def peer(fn):
        def run(model, batch):
            return fn(model, *batch.support, *batch.query, work.inner_lr, work.steps,
                      work.first_order, loss_fn)
        return run

    impls = {"mamlkit": ours("auto"), "mamlkit-vmap": ours("vmap"), "mamlkit-loop": ours("loop"),
             "plain loop": peer(peers.plain_loop_meta_loss)}
    available = peers.available_peers()
    for name, fn in (("learn2learn", peers.learn2learn_meta_loss),
                     ("higher", peers.higher_meta_loss)):
        if available.get(name) is None:
            impls[name] = peer(fn)
        else:
            print(f"# {name} skipped: {available[name]}")
    return impls


def check_gradients(work: Workload, impls) -> None:
    """Every implementation's meta-gradient must match the plain loop's before we time it.

    The check runs in float64, where agreement is exact up to rounding (1e-9 relative); in
    float32, different but equally valid kernels (a grouped convolution under vmap, say) differ
    by float32 rounding amplified through the inner steps.
    """
    base = work.make_model().to(DEVICE).double()
    batch = peers.double_batch(work.make_batch(123).to(DEVICE))
    grads = {}
    for name, fn in impls.items():
        model = _copy(base)
        fn(model, batch).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    peers.check_against_plain_loop(grads)


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def time_steps(work: Workload, impls, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    base = work.make_model().to(DEVICE)
    states = {name: _copy(base) for name in impls}
    optimizers = {n: torch.optim.Adam(m.parameters(), lr=1e-3) for n, m in states.items()}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(warmup + repeats):
        batch = work.make_batch(r).to(DEVICE)
        for name, fn in impls.items():
            model, opt = states[name], optimizers[name]
            _sync()
            start = time.perf_counter()
            if work.sampling_timed:
                batch = work.make_batch(r).to(DEVICE)
            opt.zero_grad(set_to_none=True)
            fn(model, batch).backward()
            opt.step()
            _sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def peak_memory_child(workload: str, impl: str) -> None:
    """Run in a fresh process: the step's peak RSS above the resident size before it."""
    work = WORKLOADS[workload]
    fn = implementations(work)[impl]
    model, batch = work.make_model(), work.make_batch(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = rss_mb()
    peak = PeakMemory(torch.device("cpu"))  # VmHWM: ru_maxrss carries the parent's peak
    opt.zero_grad()
    fn(model, batch).backward()
    opt.step()
    print(json.dumps({"peak_mb": peak.read() - before}))


def peak_memory(workload: str, impl: str, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child-memory", workload, impl, "--threads", str(threads)],
        capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="also peak memory per step")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.child_memory:
        peak_memory_child(*args.child_memory)
        return
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    results = {}
    for key in names:
        work = WORKLOADS[key]
        where = (torch.cuda.get_device_name() if DEVICE.type == "cuda"
                 else f"{args.threads} thread(s)")
        print(f"\n## {work.name}, {where}, median of {args.repeats}")
        impls = implementations(work)
        check_gradients(work, impls)
        times = time_steps(work, impls, args.repeats)
        medians = {n: statistics.median(t) * 1e3 for n, t in times.items()}
        plain = medians["plain loop"]
        l2l = medians.get("learn2learn")
        print(f"| implementation | ms / meta-step | vs plain loop | vs learn2learn |"
              f"{' peak MB |' if args.memory else ''}")
        print(f"|---|---|---|---|{'---|' if args.memory else ''}")
        rows = {}
        for name, ms in medians.items():
            mem = peak_memory(key, name, args.threads) if args.memory else None
            rows[name] = {"ms": ms, "speedup_vs_plain": plain / ms,
                          "speedup_vs_learn2learn": l2l / ms if l2l else None, "peak_mb": mem}
            vs_l2l = f"{l2l / ms:.2f}x" if l2l else "-"
            mem_cell = f" {mem:.0f} |" if mem is not None else ""
            print(f"| {name} | {ms:.2f} | {plain / ms:.2f}x | {vs_l2l} |{mem_cell}")
        results[key] = {"workload": work.name, "threads": args.threads, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
