"""Time one MAML meta-training step: mamlkit against a plain PyTorch loop, learn2learn and higher.

A meta-step is: adapt every task of the meta-batch, mean query loss, backward, Adam step. All
implementations run side by side in one process, interleaved (A, B, C, A, B, C, ...), and we
report medians and ratios. Before timing anything, every implementation's meta-gradient is
checked against the plain loop's. Peak memory of one step is measured in a fresh subprocess per
implementation (``--memory``), since torch's CPU allocations are invisible to tracemalloc.

    python benchmarks/meta_step.py                       # all workloads, 1 thread
    python benchmarks/meta_step.py --workload conv4-1 --memory
    bash benchmarks/install_peers.sh                     # to include learn2learn and higher

Which batching trains the 20-way paper presets fastest on a GPU (benchmarks/gpu_paper_runs.sh):

    python benchmarks/meta_step.py --device cuda --workload conv4-20w1s conv4-20w5s \
        --impls mamlkit-stacked mamlkit-vmap --compile --json choice.json

``--compile`` adds ``mamlkit-vmap+compile``: the training loop's own ``torch.compile`` of the
meta-loss (``mamlkit.run.scale.meta_loss_fn``, static shapes). Its first step holds the
compilation (``first_ms`` in the JSON); a compile that fails or falls back to eager is reported
and not timed. It is not in the float64 check (that would compile a second time); its float32
meta-gradient is compared with the eager vmap's (``compiled_vs_eager``) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
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
from mamlkit.run.scale import compile_blocker, meta_loss_fn  # noqa: E402


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
    # the shapes of the paper presets omniglot-20w1s and omniglot-20w5s (64 filters)
    "conv4-20w1s": Workload("conv4 20w1s (16 tasks, 20+300 images, 5 steps, 2nd order)",
                            lambda: Conv4(ways=20),
                            lambda s: omniglot_shaped_batch(16, 20, 1, seed=s),
                            "cross_entropy", 0.1, 5, False),
    "conv4-20w5s": Workload("conv4 20w5s (16 tasks, 100+300 images, 5 steps, 2nd order)",
                            lambda: Conv4(ways=20),
                            lambda s: omniglot_shaped_batch(16, 20, 5, seed=s),
                            "cross_entropy", 0.1, 5, False),
}
TASKS: int | None = None  # --tasks: the first N tasks of every meta-batch (quick runs)
if (OMNIGLOT_ROOT / "images_background.zip").is_file():
    WORKLOADS["omniglot-5w1s"] = Workload(
        "real Omniglot 5w1s sampled in the step (32 tasks, 5+75 images, 1 step, 2nd order)",
        lambda: Conv4(ways=5), real_omniglot_sampler(), "cross_entropy", 0.4, 1, False, True)
else:
    print(f"# real Omniglot workload skipped: no zips in {OMNIGLOT_ROOT}")


def batch_of(work: Workload, seed: int) -> TaskBatch:
    batch = work.make_batch(seed)
    return batch if TASKS is None else batch[:TASKS]


def implementations(work: Workload, with_compile: bool = False
                    ) -> dict[str, Callable[[nn.Module, TaskBatch], torch.Tensor]]:
    """Name -> function(model, batch) returning the meta-loss (not yet backpropagated).

    A ``+compile`` function has a ``steps`` dict: its ``CompiledMetaLoss`` per model (whose
    ``failed`` says whether it fell back to eager)."""
    loss_fn = MF.resolve_loss(work.loss)
    learners: dict[int, tuple[MAML, Callable]] = {}

    def ours(batching: str, compiled: bool = False):
        def run(model, batch):
            if id(model) not in learners:
                learner = MAML(model, work.inner_lr, work.steps, work.first_order, work.loss,
                               batching)
                with warnings.catch_warnings():  # a blocker is checked below, not warned
                    warnings.simplefilter("ignore")
                    learners[id(model)] = (learner, meta_loss_fn(learner, compiled))
                run.steps[id(model)] = learners[id(model)][1]
            return learners[id(model)][1](batch)
        run.steps = {}
        return run

    def peer(fn):
        def run(model, batch):
            return fn(model, *batch.support, *batch.query, work.inner_lr, work.steps,
                      work.first_order, loss_fn)
        return run

    impls = {"mamlkit": ours("auto"), "mamlkit-vmap": ours("vmap"), "mamlkit-loop": ours("loop"),
             "plain loop": peer(peers.plain_loop_meta_loss)}
    if isinstance(work.make_model(), Conv4):
        impls["mamlkit-stacked"] = ours("stacked")
    if with_compile:
        for batching in ("vmap", "stacked") if "mamlkit-stacked" in impls else ("vmap",):
            learner = MAML(work.make_model(), work.inner_lr, work.steps, work.first_order,
                           work.loss, batching)
            blocker = compile_blocker(learner)
            if blocker is None:
                impls[f"mamlkit-{batching}+compile"] = ours(batching, compiled=True)
            else:
                print(f"# mamlkit-{batching}+compile skipped: {blocker}")
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
    batch = peers.double_batch(batch_of(work, 123).to(DEVICE))
    grads = {}
    for name, fn in impls.items():
        if name.endswith("+compile"):
            continue
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


def time_steps(work: Workload, impls, repeats: int, warmup: int = 2,
               failed: dict[str, str] | None = None,
               states: dict[str, nn.Module] | None = None,
               cuda_peaks: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Seconds of every meta-step, warm-up steps included (the first holds any compilation).

    A ``+compile`` implementation that raises or falls back to eager goes into ``failed`` with
    its reason and out of the timing. ``states`` receives each implementation's model; on CUDA
    ``cuda_peaks`` the most the allocator held during one of its steps, in MB (this process's
    models and batches included: what a training process of that kind would need)."""
    failed = {} if failed is None else failed
    cuda_peaks = {} if cuda_peaks is None else cuda_peaks
    base = work.make_model().to(DEVICE)
    states = {} if states is None else states
    states.update({name: _copy(base) for name in impls})
    optimizers = {n: torch.optim.Adam(m.parameters(), lr=1e-3) for n, m in states.items()}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(warmup + repeats):
        batch = batch_of(work, r).to(DEVICE)
        for name, fn in impls.items():
            if name in failed:
                continue
            model, opt = states[name], optimizers[name]
            _sync()
            if DEVICE.type == "cuda":
                torch.cuda.reset_peak_memory_stats(DEVICE)
            start = time.perf_counter()
            if work.sampling_timed:
                batch = batch_of(work, r).to(DEVICE)
            opt.zero_grad(set_to_none=True)
            try:
                fn(model, batch).backward()
            except Exception as error:
                if not name.endswith("+compile"):
                    raise
                failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                continue
            opt.step()
            _sync()
            times[name].append(time.perf_counter() - start)
            if DEVICE.type == "cuda":
                cuda_peaks[name] = max(cuda_peaks.get(name, 0.0),
                                       torch.cuda.max_memory_allocated(DEVICE) / 2**20)
            step = getattr(fn, "steps", {}).get(id(model))
            if getattr(step, "failed", None):
                failed[name] = f"fell back to eager: {step.failed}"
    for name in failed:
        print(f"# {name} not timed: {failed[name]}")
        times.pop(name, None)
    return times


def compiled_vs_eager(work: Workload, impls, models: dict[str, nn.Module]) -> dict[str, float]:
    """Max |g_compiled - g_eager| / max |g_eager| of the float32 meta-gradients on one batch,
    for each timed ``+compile`` implementation (its model in ``models``, so that it is not
    compiled again; ``impls`` holds its eager twin, run on a copy of that model)."""
    batch = batch_of(work, 123).to(DEVICE)
    out = {}
    for name in (n for n in models if n.endswith("+compile")):
        eager_name = name.removesuffix("+compile")
        grads = {}
        for which, model in ((name, models[name]), (eager_name, _copy(models[name]))):
            model.zero_grad(set_to_none=True)
            impls[which](model, batch).backward()
            grads[which] = torch.cat([p.grad.flatten() for p in model.parameters()])
        scale = grads[eager_name].abs().max().item()
        out[name] = (grads[name] - grads[eager_name]).abs().max().item() / max(scale, 1e-12)
        print(f"# float32 meta-gradient {name} against {eager_name}: max rel. diff "
              f"{out[name]:.1e}")
    return out


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
    parser.add_argument("--workload", nargs="+", choices=[*WORKLOADS, "all"], default=["all"])
    parser.add_argument("--impls", nargs="+", metavar="NAME",
                        help="time only these implementations (the plain loop still anchors "
                             "the gradient check)")
    parser.add_argument("--compile", action="store_true",
                        help="also the training loop's torch.compile of the meta-loss")
    parser.add_argument("--tasks", type=int, help="only the first N tasks of each meta-batch")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="also peak memory per step")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE, TASKS
    DEVICE = torch.device(args.device)
    TASKS = args.tasks
    if args.child_memory:
        peak_memory_child(*args.child_memory)
        return
    names = list(WORKLOADS) if "all" in args.workload else args.workload
    results = {}
    for key in names:
        work = WORKLOADS[key]
        where = (torch.cuda.get_device_name() if DEVICE.type == "cuda"
                 else f"{args.threads} thread(s)")
        print(f"\n## {work.name}, {where}, median of {args.repeats}", flush=True)
        impls = every = implementations(work, args.compile)
        if args.impls:
            unknown = sorted(set(args.impls) - set(impls))
            if unknown:
                print(f"# not here: {', '.join(unknown)} (choose from {', '.join(impls)})")
            impls = {n: f for n, f in impls.items() if n in args.impls or n == "plain loop"}
        if any(not n.endswith("+compile") for n in impls if n != "plain loop"):
            check_gradients(work, impls)
        if args.impls and "plain loop" not in args.impls:
            impls.pop("plain loop")
        failed: dict[str, str] = {}
        models: dict[str, nn.Module] = {}
        cuda_peaks: dict[str, float] = {}
        all_times = time_steps(work, impls, args.repeats, args.warmup, failed, models,
                               cuda_peaks)
        times = {n: t[args.warmup:] for n, t in all_times.items()}
        agreement = compiled_vs_eager(work, every, {n: m for n, m in models.items()
                                                    if n not in failed})
        medians = {n: statistics.median(t) * 1e3 for n, t in times.items()}
        plain = medians.get("plain loop")
        l2l = medians.get("learn2learn")
        print(f"| implementation | ms / meta-step | vs plain loop | vs learn2learn |"
              f"{' peak MB |' if args.memory else ''}")
        print(f"|---|---|---|---|{'---|' if args.memory else ''}")
        rows = {}
        for name, ms in medians.items():
            mem = peak_memory(key, name, args.threads) if args.memory else None
            rows[name] = {"ms": ms, "speedup_vs_plain": plain / ms if plain else None,
                          "speedup_vs_learn2learn": l2l / ms if l2l else None, "peak_mb": mem,
                          "first_ms": all_times[name][0] * 1e3,
                          "cuda_peak_mb": cuda_peaks.get(name),
                          "compiled_vs_eager": agreement.get(name)}
            vs_plain = f"{plain / ms:.2f}x" if plain else "-"
            vs_l2l = f"{l2l / ms:.2f}x" if l2l else "-"
            mem_cell = f" {mem:.0f} |" if mem is not None else ""
            print(f"| {name} | {ms:.2f} | {vs_plain} | {vs_l2l} |{mem_cell}")
        results[key] = {"workload": work.name, "threads": args.threads, "device": where,
                        "tasks": TASKS, "rows": rows, "failed": failed}
        if args.json:  # after every workload: a run stopped by a time limit keeps the rest
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
