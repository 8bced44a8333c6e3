"""Scale: meta-steps per second over 1 and 2 processes, memory with checkpointing, compile.

Three parts, each written to ``benchmarks/results/scale.json`` and ``scale.md``:

- ``processes``: meta-steps per second of the training loop's step (sample the whole meta-batch,
  this rank's share, backward, all-reduce, Adam) in 1 and 2 gloo processes on this machine,
  started like ``torchrun`` would (env variables, ``mamlkit.distributed.setup``); runs alternate
  1, 2, 1, 2 processes and we report medians.
- ``memory``: second-order Omniglot-shaped 20-way 1-shot conv4 (15 queries per class, 16 tasks,
  stacked batching) with and without ``checkpoint_inner`` for 1, 5, 10 and 20 inner steps: peak
  resident set growth of one meta-step above the resident set before it (a fresh process per
  case, glibc's mmap threshold fixed so that freed memory leaves the resident set; a 1-step
  warm-up first, then the peak is reset through /proc/self/clear_refs), and seconds per
  meta-step with the variants interleaved in one process (plain, checkpointed, checkpointed
  with chunks of one task).
- ``compile``: ``torch.compile`` of the meta-loss against eager, interleaved in one process,
  after checking that the gradients agree; failures are reported with their reason.

    python benchmarks/scale.py                 # all parts, one torch thread per process
    python benchmarks/scale.py --part memory --steps 1 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meta_step import omniglot_shaped_batch  # noqa: E402

from mamlkit import MAML, Sinusoid  # noqa: E402
from mamlkit.models import Conv4, mlp  # noqa: E402
from mamlkit.run import distributed  # noqa: E402
from mamlkit.run.memory import PeakMemory, rss_mb  # noqa: E402
from mamlkit.run.scale import meta_step_backward  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------ processes
def _process_workload(name: str):
    """(learner, sampler): the whole meta-batch from a seeded generator, as in train()."""
    torch.manual_seed(0)
    if name == "sinusoid":
        learner = MAML(mlp([1, 40, 40, 1]), 0.01, 1, False, "mse")
        tasks = Sinusoid(10)
        return learner, lambda g: tasks.sample(25, g)
    # omniglot-5w1s-quick's shapes: conv4 with 32 filters, 5 queries per class, 16 tasks
    learner = MAML(Conv4(5, hidden=32), 0.4, 1, False, "cross_entropy")
    return learner, lambda g: omniglot_shaped_batch(
        16, queries=5, seed=int(torch.randint(0, 2**31, (1,), generator=g)))


def _process_worker(rank: int, world: int, port: int, name: str, steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    context = distributed.setup()
    learner, sample = _process_workload(name)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    params = list(learner.parameters())
    times, cpu = [], []
    for step in range(3 + steps):  # 3 warm-up steps
        if step == 3:
            distributed.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        batch = sample(generator)
        optimizer.zero_grad(set_to_none=True)
        meta_step_backward(learner.meta_loss, batch, params, context)
        optimizer.step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    distributed.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps({"wall": times[3:], "cpu": cpu[3:]}))
    distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes(names: list[str], rounds: int) -> dict:
    steps = {"sinusoid": 300, "conv4-5w1s-quick": 20}
    results: dict = {}
    for name in names:
        wall: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(rounds):
            for world in (1, 2):
                out = RESULTS / f".scale-{name}-{world}.json"
                mp.spawn(_process_worker, args=(world, _free_port(), name, steps[name],
                                                str(out)), nprocs=world, join=True)
                measured = json.loads(out.read_text())
                wall[world] += measured["wall"]
                cpu[world] += measured["cpu"]
                out.unlink()
        ms = {w: statistics.median(t) * 1e3 for w, t in wall.items()}
        cpu_ms = {w: statistics.median(t) * 1e3 for w, t in cpu.items()}
        results[name] = {"ms_per_step": ms, "steps_per_s": {w: 1e3 / v for w, v in ms.items()},
                         "speedup_2_vs_1": ms[1] / ms[2], "rank0_cpu_ms_per_step": cpu_ms,
                         "load_average": os.getloadavg()[0]}
        print(f"{name}: 1 process {ms[1]:.1f} ms/step, 2 processes {ms[2]:.1f} ms/step, "
              f"{ms[1] / ms[2]:.2f}x; rank 0 CPU time {cpu_ms[1]:.1f} -> {cpu_ms[2]:.1f} ms "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    return results


# --------------------------------------------------------------------- memory
VARIANTS = {"plain": (False, None), "checkpointed": (True, None),
            "checkpointed, chunk_size=1": (True, 1)}


def _memory_learner(steps: int, variant: str) -> tuple[MAML, object]:
    """Second-order conv4 on an Omniglot-shaped 20-way 1-shot batch (15 queries, 16 tasks)."""
    torch.manual_seed(0)
    checkpointed, chunk = VARIANTS[variant]
    learner = MAML(Conv4(20), 0.1, steps, False, "cross_entropy", chunk_size=chunk,
                   checkpoint_inner=checkpointed)
    return learner, omniglot_shaped_batch(16, ways=20, shots=1, queries=15)


def _meta_step(learner: MAML, batch, optimizer, steps: int | None = None) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    learner.meta_loss(batch, steps).backward()
    optimizer.step()
    return time.perf_counter() - start


def memory_child(steps: int, variant: str) -> None:
    """A fresh process: a 1-step warm-up, then one measured meta-step's peak RSS growth."""
    torch.set_num_threads(1)
    learner, batch = _memory_learner(steps, variant)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    _meta_step(learner, batch, optimizer, 1)  # allocator and oneDNN caches, as in training
    peak = PeakMemory(torch.device("cpu"))
    before = rss_mb()
    _meta_step(learner, batch, optimizer)
    print(json.dumps({"peak_mb": peak.read() - before, "resettable": peak.resettable}))


def time_child(steps: int, repeats: int) -> None:
    """One process, the variants interleaved (A, B, C, A, B, C): seconds per meta-step."""
    torch.set_num_threads(1)
    runs = {v: _memory_learner(steps, v) for v in VARIANTS}
    optimizers = {v: torch.optim.Adam(learner.parameters(), lr=1e-3)
                  for v, (learner, _) in runs.items()}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(1 + repeats):
        for v, (learner, batch) in runs.items():
            seconds = _meta_step(learner, batch, optimizers[v], 1 if r == 0 else None)
            if r:
                times[v].append(seconds)
    print(json.dumps({v: statistics.median(t) for v, t in times.items()}))


def _child(*args: str) -> dict:
    env = dict(os.environ)
    if args[0] == "--memory-child":
        # a fixed mmap threshold: freed tensors go back to the OS at once, so the resident set
        # follows live memory (glibc's dynamic threshold would keep the warm-up's memory around)
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory(step_counts: list[int], repeats: int) -> dict:
    results = {}
    for steps in step_counts:
        peaks = {v: _child("--memory-child", str(steps), v) for v in VARIANTS}
        seconds = _child("--time-child", str(steps), str(repeats))
        row = {v: {"peak_mb": peaks[v]["peak_mb"], "s": seconds[v]} for v in VARIANTS}
        plain = row["plain"]
        for v in VARIANTS:
            row[v]["memory_ratio"] = plain["peak_mb"] / row[v]["peak_mb"]
            row[v]["time_ratio"] = row[v]["s"] / plain["s"]
        results[steps] = row
        print(f"{steps} steps: " + "; ".join(
            f"{v} {r['peak_mb']:.0f} MB {r['s']:.1f} s ({r['memory_ratio']:.1f}x less memory, "
            f"{r['time_ratio']:.2f}x the time)" for v, r in row.items()), flush=True)
    return results


# -------------------------------------------------------------------- compile
def _compile_cases() -> dict:
    def sinusoid(first_order: bool):
        torch.manual_seed(0)
        learner = MAML(mlp([1, 40, 40, 1]), 0.01, 1, first_order, "mse")
        tasks = Sinusoid(10)
        return learner, lambda r: tasks.sample(25, torch.Generator().manual_seed(r))

    def conv4(first_order: bool):
        torch.manual_seed(0)
        learner = MAML(Conv4(5), 0.4, 1, first_order, "cross_entropy")
        return learner, lambda r: omniglot_shaped_batch(32, seed=r)

    return {"sinusoid, 2nd order": lambda: sinusoid(False),
            "sinusoid, 1st order": lambda: sinusoid(True),
            "conv4 5w1s 32 tasks, 1st order": lambda: conv4(True),
            "conv4 5w1s 32 tasks, 2nd order": lambda: conv4(False)}


def compiled(repeats: int) -> dict:
    from mamlkit.functional.task_batch import TaskBatch

    results = {}
    for name, make in _compile_cases().items():
        learner, sample = make()
        params = list(learner.parameters())

        def eager(batch, learner=learner):
            return learner.meta_loss(batch)

        def loss_of(sx, sy, qx, qy, learner=learner):
            return learner.meta_loss(TaskBatch((sx, sy), (qx, qy)))

        fast = torch.compile(loss_of, dynamic=False)
        batch = sample(0)
        start = time.perf_counter()
        try:
            grads_c = torch.autograd.grad(fast(*batch.support, *batch.query), params)
        except Exception as error:  # noqa: BLE001 - we report why
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            results[name] = {"ok": False, "reason": reason}
            print(f"{name}: compile fails: {reason}", flush=True)
            continue
        compile_s = time.perf_counter() - start
        grads_e = torch.autograd.grad(eager(batch), params)
        scale_ = max(g.abs().max().item() for g in grads_e)
        error = max((a - b).abs().max().item() for a, b in zip(grads_c, grads_e, strict=True))
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for r in range(2 + repeats):
            batch = sample(r + 1)
            for kind, fn in (("eager", eager), ("compiled", None)):
                start = time.perf_counter()
                loss = eager(batch) if fn else fast(*batch.support, *batch.query)
                torch.autograd.grad(loss, params)
                if r >= 2:
                    times[kind].append(time.perf_counter() - start)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        results[name] = {"ok": True, "compile_s": compile_s, "ms": ms,
                         "speedup": ms["eager"] / ms["compiled"],
                         "grad_max_rel_diff": error / scale_}
        print(f"{name}: eager {ms['eager']:.1f} ms, compiled {ms['compiled']:.1f} ms, "
              f"{ms['eager'] / ms['compiled']:.2f}x (compile {compile_s:.0f} s, gradient "
              f"rel. diff {error / scale_:.1e})", flush=True)
    return results


# --------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    lines = ["# Scale: processes, memory, compile", "",
             f"CPU, {os.cpu_count()} cores shared with other jobs, torch {torch.__version__}, "
             "one torch thread per process; medians.", ""]
    if "processes" in results:
        lines += ["## Meta-steps per second, 1 and 2 gloo processes", "",
                  "Rank 0's CPU time per step shows the work each process does; the wall-clock "
                  "speed-up needs a free core per process (see the load average).", "",
                  "| workload | 1 process | 2 processes | speed-up | rank 0 CPU ms/step, 1 -> 2 "
                  "processes | load average |", "|---|---|---|---|---|---|"]
        for name, r in results["processes"].items():
            s, c = r["steps_per_s"], r.get("rank0_cpu_ms_per_step", {})
            cpu_cell = f"{c['1']:.1f} -> {c['2']:.1f}" if c else ""
            lines.append(f"| {name} | {s['1']:.1f}/s | {s['2']:.1f}/s | "
                         f"{r['speedup_2_vs_1']:.2f}x | {cpu_cell} | "
                         f"{r.get('load_average', float('nan')):.1f} |")
        lines.append("")
    if "memory" in results:
        lines += ["## Peak memory of a second-order meta-step, with and without checkpointing",
                  "", "conv4, Omniglot-shaped 20-way 1-shot, 15 queries per class, 16 tasks "
                  "(stacked batching, chunks of 4 tasks unless said); peak resident-set growth "
                  "over one meta-step (fresh process each), seconds per meta-step (variants "
                  "interleaved in one process).", "",
                  "| inner steps | " + " | ".join(f"{v}: MB, s" for v in VARIANTS) + " |",
                  "|---|" + "---|" * len(VARIANTS)]
        for steps, row in results["memory"].items():
            cells = [f"{r['peak_mb']:.0f} MB ({r['memory_ratio']:.1f}x less), {r['s']:.1f} s "
                     f"({r['time_ratio']:.2f}x)" if v != "plain" else
                     f"{r['peak_mb']:.0f} MB, {r['s']:.1f} s" for v, r in row.items()]
            lines.append(f"| {steps} | " + " | ".join(cells) + " |")
        lines.append("")
    if "compile" in results:
        lines += ["## torch.compile of the meta-loss against eager (forward and backward)", "",
                  "| workload | eager ms | compiled ms | speed-up | compile s | note |",
                  "|---|---|---|---|---|---|"]
        for name, r in results["compile"].items():
            if r["ok"]:
                lines.append(f"| {name} | {r['ms']['eager']:.1f} | {r['ms']['compiled']:.1f} | "
                             f"{r['speedup']:.2f}x | {r['compile_s']:.0f} | gradient rel. diff "
                             f"{r['grad_max_rel_diff']:.0e} |")
            else:
                lines.append(f"| {name} | | | fails | | {r['reason']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "processes", "memory", "compile"],
                        default="all")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--time-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        memory_child(int(args.memory_child[0]), args.memory_child[1])
        return
    if args.time_child:
        time_child(*args.time_child)
        return
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "scale.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if args.part in ("all", "processes"):
        results["processes"] = processes(["sinusoid", "conv4-5w1s-quick"], args.rounds)
    if args.part in ("all", "memory"):
        results["memory"] = memory(args.steps, args.repeats)
    if args.part in ("all", "compile"):
        results["compile"] = compiled(max(args.repeats, 5))
    path.write_text(json.dumps(results, indent=2) + "\n")
    results = json.loads(path.read_text())  # str keys, as read back
    (RESULTS / "scale.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
