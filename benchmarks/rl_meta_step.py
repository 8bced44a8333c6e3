"""One paper-size meta-RL iteration against the machine's two limits (issue 22, part 1).

- **physics**: raw ``mujoco.mj_step(model, data, nstep=frame_skip)`` steps per second on one
  core with the environment's own ``MjModel`` (half-cheetah, ant; the ant adds
  ``mj_rnePostConstraint``, as its environment does), at gymnasium's 5 simulator steps per
  action and at the paper's code's 1, and the batched environment with random actions (what
  the wrapper adds);
- **arithmetic**: this CPU's float32 GEMM rate on one thread (a large square product, and the
  [rows x 100] x [100 x 100] product that dominates a 100-100 policy), against the FLOPs of the
  iteration's phases (``torch.utils.flop_counter``: matrix products only);
- **the iteration**, phase by phase: sampling with theta (pre), the no-grad adaptation for
  sampling, sampling with theta' (post), then the second-order TRPO outer step with either KL
  product (``fisher_product``: ``hessian``, reverse-over-reverse, the old default; or
  ``gauss_newton``, J^T M J): the old policy's outputs, surrogate + gradient, H's graph, the CG
  products, the quadratic form s'Hs that scales the step, the line search. One meta-batch is
  sampled once; the outer step runs on it from the same parameters with each product,
  interleaved (A, B, A, B, ...); the first round counts FLOPs and is not timed. The load
  average is recorded before and after every part.

    python benchmarks/rl_meta_step.py --quick   # nav2d-paper (20x20xH100), cheetah-dir 10x10xH200
    python benchmarks/rl_meta_step.py            # cheetah-dir at 40x20xH200: long
    python benchmarks/rl_meta_step.py --quick --out benchmarks/results/rl/meta_step.json
    python benchmarks/rl_meta_step.py --presets cheetah-dir --parts physics training \\
        --out benchmarks/results/rl/meta_step_training.json   # the loop at its defaults, vs physics

``--quick`` runs the locomotion presets at 10 tasks x 10 trajectories (H = 200):
every phase is linear in tasks x trajectories (sampling steps, rows of every matrix product), so
its times and FLOPs are 1/8 of the paper's 40 x 20 (the FLOPs exactly). Phase timing
wraps the library's own functions (``rl.trpo``'s products and line search), nothing is
reimplemented.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl_sampling import env_only  # noqa: E402  (the script beside this one)

from mamlkit.envs import make_batch_env
from mamlkit.envs.ant import AntBatch
from mamlkit.envs.half_cheetah import HalfCheetahBatch
from mamlkit.envs.mujoco_tasks import FRAME_SKIP
from mamlkit.functional.task_batch import StepData, TaskBatch
from mamlkit.rl import trpo
from mamlkit.rl.losses import RLData
from mamlkit.rl.outer import OuterSettings, outer_step
from mamlkit.run.adapted import adapted_policy, query_actions
from mamlkit.run.build import build_learner, build_network, build_tasks
from mamlkit.run.config import resolve
from mamlkit.run.loop import train

PAPER = {"tasks": 40, "trajectories": 20}
QUICK = {"meta_batch_size": 10, "trajectories": 10}


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ---- physics ---------------------------------------------------------------------------------

def raw_steps_per_s(batch_class: type, ant: bool, steps: int = 2000, seed: int = 0,
                    frame_skip: int = FRAME_SKIP) -> float:
    """``mj_step(nstep=frame_skip)`` (+ ``mj_rnePostConstraint`` for the ant) of one ``MjData``
    of the environment's model, random actions in the control range, resets when the ant
    falls."""
    env = batch_class()
    model = env.model
    data = mujoco.MjData(model)
    rng = np.random.default_rng(seed)
    low, high = model.actuator_ctrlrange.T
    actions = rng.uniform(low, high, size=(steps, model.nu)) * 0.1
    start = time.perf_counter()
    for t in range(steps):
        data.ctrl[:] = actions[t]
        mujoco.mj_step(model, data, nstep=frame_skip)
        if ant:
            mujoco.mj_rnePostConstraint(model, data)
            if not 0.2 <= data.qpos[2] <= 1.0:
                mujoco.mj_resetData(model, data)
    return steps / (time.perf_counter() - start)


def batched_steps_per_s(name: str, tasks: int = 10, trajectories: int = 10,
                        horizon: int = 100) -> float:
    """The batched environment with random actions (std 0.1): valid steps per second, measured
    as ``benchmarks/rl_sampling.py`` measures the environment alone."""
    env = make_batch_env(name, horizon=horizon)
    return env_only(env, env.sample_tasks(tasks, torch.Generator().manual_seed(0)),
                    trajectories, horizon)


def physics(repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"load_before": load()}
    for robot, cls, ant, env_name in (("half-cheetah", HalfCheetahBatch, False, "cheetah-dir"),
                                      ("ant", AntBatch, True, "ant-dir")):
        raw, one_frame, batched = [], [], []
        for r in range(repeats):
            raw.append(raw_steps_per_s(cls, ant, seed=r))
            one_frame.append(raw_steps_per_s(cls, ant, seed=r, frame_skip=1))
            batched.append(batched_steps_per_s(env_name))
        out[robot] = {"raw_mj_step_per_s": _summary(raw),
                      "raw_mj_step_per_s_frame_skip_1": _summary(one_frame),
                      "batched_env_per_s": _summary(batched)}
    out["load_after"] = load()
    return out


# ---- arithmetic ------------------------------------------------------------------------------

def gemm_rate(m: int, k: int, n: int, repeats: int = 7) -> float:
    """float32 ``[m, k] @ [k, n]`` FLOP/s on the current thread count (best of ``repeats``)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * m * k * n / best


def arithmetic() -> dict[str, Any]:
    before = load()
    return {"load_before": before,
            "gemm_1024_gflops": round(gemm_rate(1024, 1024, 1024) / 1e9, 1),
            "gemm_40000x100x100_gflops": round(gemm_rate(40000, 100, 100) / 1e9, 1),
            "load_after": load()}


# ---- the iteration ---------------------------------------------------------------------------

class Phases:
    """Seconds and FLOPs per phase; ``flops`` counts (the warm-up round) instead of timing."""

    def __init__(self, flops: bool) -> None:
        self.seconds: dict[str, float] = {}
        self.flops: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.counting = flops

    @contextmanager
    def phase(self, name: str):
        counter = FlopCounterMode(display=False) if self.counting else nullcontext()
        start = time.perf_counter()
        with counter:
            yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.counts[name] = self.counts.get(name, 0) + 1
        if self.counting:
            self.flops[name] = self.flops.get(name, 0.0) + counter.get_total_flops()


@contextmanager
def instrumented(phases: Phases):
    """Time ``rl.trpo``'s products (graph building, each product and the quadratic form
    s'Hs) and line search where ``trpo_step`` calls them."""
    saved = {n: getattr(trpo, n) for n in ("_hessian_operator", "_gauss_newton_operator",
                                            "_line_search")}

    def products(make: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            with phases.phase("H graph"):
                matvec, quadratic = make(*args, **kwargs)

            def timed(v):
                with phases.phase("CG products"):
                    return matvec(v)

            def timed_form(v):
                with phases.phase("s'Hs"):
                    return quadratic(v)

            return timed, timed_form
        return wrapped

    def line_search(*args, **kwargs):
        with phases.phase("line search"):
            return saved["_line_search"](*args, **kwargs)

    trpo._hessian_operator = products(saved["_hessian_operator"])
    trpo._gauss_newton_operator = products(saved["_gauss_newton_operator"])
    trpo._line_search = line_search
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(trpo, name, fn)


def warm_up(config, learner) -> None:
    """The first adaptation of a process costs seconds once (torch.func's set-up): pay it on a
    tiny synthetic meta-batch, with both products, before anything is timed."""
    model = learner.model
    obs_dim, act_dim = model.mean[0].in_features, model.log_std.numel()
    g = torch.Generator().manual_seed(0)
    data = RLData(torch.randn(2, 2, 3, obs_dim, generator=g),
                  torch.randn(2, 2, 3, act_dim, generator=g), torch.randn(2, 2, 3, generator=g),
                  torch.ones(2, 2, 3))
    batch = TaskBatch(StepData([data]), data, learner.loss_fn)
    learner.adapted_params(batch.support, 1)
    for product in ("hessian", "gauss_newton"):
        twin = copy.deepcopy(learner)
        outer_step(list(twin.parameters()),
                   lambda k, twin=twin: twin.map_adapted(batch, query_actions), batch.query,
                   OuterSettings("trpo", fisher_product=product, cg_iters=2))


def sample(config, learner, phases: Phases):
    """One meta-batch: support with theta, adaptation, query with theta' (timed apart)."""
    tasks = build_tasks(config, "train")
    g = torch.Generator().manual_seed(config.seed)
    inner = adapted_policy(learner)
    marks: list[float] = []

    def policy_for(support):
        marks.append(time.perf_counter())
        policy = inner(support)
        marks.append(time.perf_counter())
        return policy

    rl = tasks.collect(tasks.sample_tasks(config.meta_batch_size, g), g, policy_for, 1)
    end = time.perf_counter()
    steps = sum(int(e.mask.sum()) for e in [*rl.support_episodes, rl.query_episodes])
    # marks: [theta policy in, out, adapted policy in, out]
    phases.seconds.update({"sampling pre": marks[2] - marks[1],
                           "adaptation for sampling": marks[3] - marks[2],
                           "sampling post": end - marks[3]})
    return rl, steps


def outer(config, learner, rl, product: str, phases: Phases):
    """The TRPO outer step of ``config`` on ``rl`` with ``product``; the parameters' change."""
    settings = OuterSettings("trpo", config.max_kl, config.cg_iters, config.cg_damping,
                             config.cg_subsample, product)
    calls = {"n": 0}

    def distribution(k):
        calls["n"] += 1
        return learner.map_adapted(rl.tasks if k is None else rl.tasks[:k], query_actions)

    before = torch.cat([p.detach().reshape(-1).clone() for p in learner.parameters()])
    with instrumented(phases), phases.phase("outer step"):
        stats = outer_step(list(learner.parameters()), distribution, rl.tasks.query, settings)
    after = torch.cat([p.detach().reshape(-1) for p in learner.parameters()])
    phases.counts["distribution calls"] = calls["n"]
    return after - before, stats


def iteration(preset: str, quick: bool, repeats: int) -> dict[str, Any]:
    overrides = dict(QUICK) if quick and preset != "nav2d-paper" else {}
    config = resolve(preset, overrides)
    torch.manual_seed(config.seed)
    tasks = build_tasks(config, "train")
    learner = build_learner(config, build_network(config, tasks), tasks)
    warm_up(config, learner)
    result: dict[str, Any] = {"preset": preset, "overrides": overrides, "load_before": load(),
                              "shape": [config.meta_batch_size, config.trajectories,
                                        config.horizon or tasks.env.horizon],
                              "estimator": config.estimator, "cg_iters": config.cg_iters,
                              "cg_subsample": config.cg_subsample}
    sampling = Phases(False)
    rl, steps = sample(config, learner, sampling)
    result["sampling"] = {k: round(v, 3) for k, v in sampling.seconds.items()}
    result["env_steps"] = steps
    runs: dict[str, list[Phases]] = {"hessian": [], "gauss_newton": []}
    steps_taken: dict[str, Any] = {}
    for r in range(repeats + 1):
        for product in runs:
            phases = Phases(flops=r == 0)
            twin = copy.deepcopy(learner)
            change, stats = outer(config, twin, rl, product, phases)
            if r == 0:
                result.setdefault("flops", {})[product] = {
                    k: round(v / 1e9, 2) for k, v in phases.flops.items()}
                result.setdefault("counts", {})[product] = dict(phases.counts)
                steps_taken[product] = (change, stats)
            else:
                runs[product].append(phases)
    for ps in runs.values():
        for p in ps:  # what the outer step spends outside H and the line search
            p.seconds["old outputs + surrogate + gradient"] = p.seconds["outer step"] - sum(
                p.seconds.get(k, 0.0) for k in ("H graph", "CG products", "s'Hs", "line search"))
    result["seconds"] = {product: {name: _summary([p.seconds[name] for p in ps])
                                   for name in ps[0].seconds} for product, ps in runs.items()}
    (a, sa), (b, sb) = steps_taken["hessian"], steps_taken["gauss_newton"]
    result["step_agreement"] = {
        "relative_difference": (b - a).norm().item() / max(a.norm().item(), 1e-30),
        "cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
        "step_fraction": [sa.step_fraction, sb.step_fraction], "kl": [sa.kl, sb.kl]}
    result["load_after"] = load()
    return result


# ---- the training loop at the preset's defaults ------------------------------------------------

def training(preset: str, iterations: int) -> dict[str, Any]:
    """``iterations`` iterations of the preset's own training loop at its defaults (threads,
    chunk_size): seconds of each iteration but the first (torch.func's one-time set-up) and the
    last (which also validates), and the environment steps each one took."""
    overrides = {"iterations": iterations, "log_every": 1, "val_every": 10**6,
                 "checkpoint_every": 10**6, "val_tasks": 1, "loggers": ["jsonl"]}
    config = resolve(preset, overrides)
    before = load()
    with tempfile.TemporaryDirectory() as out:
        train(config, Path(out), progress=False)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").open()]
    times = [b["seconds"] - a["seconds"] for a, b in zip(records, records[1:], strict=False)]
    steps = [b["env_steps"] - a["env_steps"] for a, b in zip(records, records[1:], strict=False)]
    timed = times[:-1] if len(times) > 1 else times  # the last one validates too
    return {"preset": preset, "threads": config.threads, "chunk_size": config.chunk_size,
            "frame_skip": config.frame_skip or FRAME_SKIP,
            "shape": [config.meta_batch_size, config.trajectories, config.horizon],
            "iteration_seconds": _summary(timed), "all_seconds": [round(t, 2) for t in times],
            "env_steps_per_iteration": steps[0], "first": records[0]["seconds"],
            "returns": [[r["pre_return"], r["post_return"]] for r in records],
            "load_before": before, "load_after": load()}


def against_physics(run: dict[str, Any], raw_per_core: float, cores: int = 2) -> dict[str, Any]:
    """The iteration's seconds over the physics time of its steps on ``cores`` cores at the
    one-core raw ``mj_step`` rate (the issue's measure of "near the machine's limit")."""
    physics_seconds = run["env_steps_per_iteration"] / (cores * raw_per_core)
    return {"physics_seconds": round(physics_seconds, 2),
            "ratio": round(run["iteration_seconds"]["median"] / physics_seconds, 2)}


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["nav2d-paper", "cheetah-dir"])
    parser.add_argument("--quick", action="store_true",
                        help="locomotion presets at 10 tasks x 10 trajectories (1/8 of 40 x 20)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per product")
    parser.add_argument("--parts", nargs="*", default=["physics", "arithmetic", "iteration"],
                        help="physics, arithmetic, iteration (phases), training (the loop)")
    parser.add_argument("--training-iterations", type=int, default=4,
                        help="training: iterations per preset (the first and last not timed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"threads": args.threads, "quick": args.quick,
                               "cpu": _cpu_name(), "torch": torch.__version__}
    if "physics" in args.parts:
        results["physics"] = physics(args.repeats + 1)
        print(json.dumps(results["physics"]), flush=True)
    if "arithmetic" in args.parts:
        results["arithmetic"] = arithmetic()
        print(json.dumps(results["arithmetic"]), flush=True)
    if "iteration" in args.parts:
        results["iterations"] = []
        for preset in args.presets:
            results["iterations"].append(iteration(preset, args.quick, args.repeats))
            print(json.dumps(results["iterations"][-1]), flush=True)
    if "training" in args.parts:
        results["training"] = []
        for preset in args.presets:
            run = training(preset, args.training_iterations)
            if "physics" in results:
                robot = "ant" if preset.startswith("ant") else "half-cheetah"
                rates = results["physics"][robot]
                raw = (rates["raw_mj_step_per_s_frame_skip_1"] if run["frame_skip"] == 1
                       else rates["raw_mj_step_per_s"])["median"]
                run["against_physics"] = against_physics(run, raw)
            results["training"].append(run)
            print(json.dumps(run), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
