"""Batch norm's second derivative in the stacked Conv4 meta-step: torch's against the closed form.

Second-order MAML differentiates batch norm's backward once more. torch's double backward
(``batchnorm_double_backward``) is a composite of some twenty passes over the activations;
``mamlkit.functional.batch_norm`` gives it in closed form (stacked batch norm on CPU uses it).
This script times one meta-step (adapt, query loss, backward, Adam step) of the Omniglot paper
presets' shapes with each, interleaved in one process (medians), checks that the two
meta-gradients agree (float64: to rounding; float32: the relative difference), and with
``--memory`` measures each step's peak resident-set growth in a fresh process.

    python benchmarks/batch_norm_grad.py                          # 5w1s and 5w5s
    python benchmarks/batch_norm_grad.py --workload 20w1s --repeats 3 --memory
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mamlkit import MAML, TaskBatch
from mamlkit.models import Conv4, task_conv
from mamlkit.run.memory import PeakMemory, rss_mb

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
from meta_step import omniglot_shaped_batch  # noqa: E402

# the paper presets' shapes: ways, shots, queries per class, tasks, inner steps, inner_lr
WORKLOADS = {
    "5w1s": (5, 1, 15, 32, 1, 0.4),
    "5w5s": (5, 5, 15, 32, 1, 0.4),
    "20w1s": (20, 1, 15, 16, 5, 0.1),
    "20w5s": (20, 5, 15, 16, 5, 0.1),
}
VARIANTS = ("torch", "closed form")


def omniglot_shaped(ways: int, shots: int, queries: int, tasks: int, seed: int,
                    dtype: torch.dtype = torch.float32) -> TaskBatch:
    """``meta_step.py``'s random Omniglot-shaped tasks, in ``dtype``."""
    batch = omniglot_shaped_batch(tasks, ways, shots, queries, seed=seed)
    return peers.double_batch(batch) if dtype == torch.float64 else batch


def _torch_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """Stacked batch norm with torch's double backward ("torch") or the closed form."""
    closed_form = task_conv.batch_norm
    if name == "torch":
        task_conv.batch_norm = _torch_batch_norm  # type: ignore[assignment]
    try:
        yield
    finally:
        task_conv.batch_norm = closed_form  # type: ignore[assignment]


def learner(workload: str, dtype: torch.dtype = torch.float32) -> MAML:
    ways, _, _, _, steps, inner_lr = WORKLOADS[workload]
    torch.manual_seed(0)
    return MAML(Conv4(ways=ways, hidden=64).to(dtype), inner_lr, steps, batching="stacked")


def meta_gradient(maml: MAML, batch: TaskBatch) -> Tensor:
    maml.model.zero_grad(set_to_none=True)
    maml.meta_loss(batch).backward()
    return torch.cat([p.grad.flatten() for p in maml.model.parameters()])  # type: ignore[union-attr]


def agreement(workload: str, dtype: torch.dtype) -> float:
    """Max |closed form - torch| / max |torch| of the meta-gradients on one batch."""
    batch = omniglot_shaped(*WORKLOADS[workload][:4], seed=123, dtype=dtype)
    grads = {}
    for name in VARIANTS:
        with variant(name):
            grads[name] = meta_gradient(learner(workload, dtype), batch)
    ref = grads["torch"]
    return ((grads["closed form"] - ref).abs().max() / ref.abs().max()).item()


def time_steps(workload: str, repeats: int, warmup: int) -> dict[str, list[float]]:
    learners = {name: learner(workload) for name in VARIANTS}
    optimizers = {n: torch.optim.Adam(m.parameters(), lr=1e-3) for n, m in learners.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(warmup + repeats):
        batch = omniglot_shaped(*WORKLOADS[workload][:4], seed=r)
        for name in VARIANTS:
            with variant(name):
                start = time.perf_counter()
                meta_gradient(learners[name], batch)
                optimizers[name].step()
                if r >= warmup:
                    times[name].append(time.perf_counter() - start)
    return times


def peak_memory_child(workload: str, name: str) -> None:
    """In a fresh process: one step's peak resident set above the size before it."""
    maml, batch = learner(workload), omniglot_shaped(*WORKLOADS[workload][:4], seed=0)
    before = rss_mb()
    peak = PeakMemory(torch.device("cpu"))
    with variant(name):
        meta_gradient(maml, batch)
    print(json.dumps({"peak_mb": peak.read() - before}))


def peak_memory(workload: str, name: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--child-memory", workload, name],
                         check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mb"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs="+", choices=list(WORKLOADS), default=["5w1s", "5w5s"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="peak memory, fresh processes")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child_memory:
        peak_memory_child(*args.child_memory)
        return
    rows = []
    for workload in args.workload:
        row: dict = {"workload": workload, "threads": args.threads,
                     "rel_diff_float64": agreement(workload, torch.float64),
                     "rel_diff_float32": agreement(workload, torch.float32)}
        assert row["rel_diff_float64"] < 1e-9, row  # the same derivative, up to rounding
        times = time_steps(workload, args.repeats, args.warmup)
        for name in VARIANTS:
            row[f"{name} s"] = statistics.median(times[name])
            row[f"{name} all s"] = [round(t, 3) for t in times[name]]
            if args.memory:
                row[f"{name} peak MB"] = peak_memory(workload, name)
        row["speed-up"] = row["torch s"] / row["closed form s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
