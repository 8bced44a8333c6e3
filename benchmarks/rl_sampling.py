"""Steps per second of the batched meta-RL environments and samplers (issue 4).

Measures, interleaved and repeated (median of ``--repeats``):
- each batched environment alone (zero / random actions, no policy);
- ``sample_episodes`` with a small Gaussian MLP policy in the loop, 1 and 2 torch threads;
- ``SamplerPool`` with 1 and 2 worker processes (the caller samples a share too), 1 thread each.

    python benchmarks/rl_sampling.py                    # nav2d 20x20xH100, cheetah 20x10xH100
    python benchmarks/rl_sampling.py --tasks 40 --trajectories 20 --horizon 200 --envs cheetah-vel
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from mamlkit.envs import make_batch_env
from mamlkit.rl import sample_episodes
from mamlkit.rl.workers import SamplerPool


class MLPPolicy(nn.Module):
    """A picklable Gaussian MLP (tanh hidden layers, state-independent std)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(obs_dim, width), nn.Tanh()]
            obs_dim = width
        self.net = nn.Sequential(*layers, nn.Linear(obs_dim, act_dim))
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(obs), self.log_std.exp()


def env_only(env, tasks: list[dict], trajectories: int, horizon: int) -> float:
    """Reset and ``horizon`` steps with random actions drawn beforehand."""
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(horizon, len(tasks), trajectories, env.action_dim, generator=g) * 0.1
    start = time.perf_counter()
    env.reset(tasks, trajectories, g)
    for t in range(horizon):
        env.step(actions[t])
    return len(tasks) * trajectories * horizon / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["nav2d", "cheetah-vel"])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=0,
                        help="per task (default: 20 for nav2d, 10 for the cheetah)")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for name in args.envs:
        n = args.trajectories or (20 if name == "nav2d" else 10)
        env = make_batch_env(name, horizon=args.horizon)
        tasks = env.sample_tasks(args.tasks, 0)
        policy = MLPPolicy(env.observation_dim, env.action_dim)
        steps = args.tasks * n * args.horizon
        pools = {w: SamplerPool(name, {"horizon": args.horizon}, workers=w) for w in args.workers}
        for pool in pools.values():
            pool.start()
        times: dict[str, list[float]] = {}
        try:
            for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
                runs = {"env only (1 thread)": None, "sample 1 thread": 1, "sample 2 threads": 2}
                for label, threads in runs.items():
                    torch.set_num_threads(threads or 1)
                    if threads is None:
                        rate = env_only(env, tasks, n, args.horizon)
                    else:
                        start = time.perf_counter()
                        sample_episodes(env, policy, tasks, n, torch.Generator().manual_seed(0))
                        rate = steps / (time.perf_counter() - start)
                    if repeat:
                        times.setdefault(label, []).append(rate)
                torch.set_num_threads(1)
                for w, pool in pools.items():
                    start = time.perf_counter()
                    pool.sample(policy, tasks, n, torch.Generator().manual_seed(0))
                    if repeat:
                        times.setdefault(f"pool {w} worker(s) + caller", []).append(
                            steps / (time.perf_counter() - start))
        finally:
            for pool in pools.values():
                pool.close()
        key = f"{name} {args.tasks}x{n}xH{args.horizon}"
        results[key] = {label: round(statistics.median(r)) for label, r in times.items()}
        for label, rate in results[key].items():
            print(f"{key:28s} {label:28s} {rate:>10,d} steps/s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
