"""Steps per second of the batched meta-RL environments and samplers (issues 4 and 13).

Measures, interleaved and repeated (median, min and max of ``--repeats``):
- each batched environment alone (random actions, no policy);
- ``sample_episodes`` with a small Gaussian MLP policy in the loop, 1 and 2 torch threads;
- ``SamplerPool`` with 1 and 2 worker processes (the caller samples a share too), 1 thread each:
  config ``sampler_workers`` = workers + 1.

Steps are valid environment steps (the ant's episodes end when it falls or jumps: ended copies
are neither simulated nor counted). ``--std`` is the policy's standard deviation: 1.0 (the
initial policy) makes the ant jump out of its healthy height within ~20 steps, 0.1 keeps most
episodes alive for the whole horizon, as a trained policy does. The load average of the machine
before and after is recorded.

    python benchmarks/rl_sampling.py                    # nav2d 20x20xH100, cheetah 20x10xH100
    python benchmarks/rl_sampling.py --tasks 40 --trajectories 20 --horizon 200 --envs cheetah-vel
    python benchmarks/rl_sampling.py --envs cheetah-vel ant-vel --std 0.1 --out results.json
    python benchmarks/rl_sampling.py --outer cheetah-vel ant-vel   # meta-step, no simulator
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

from mamlkit.envs import make_batch_env
from mamlkit.rl import sample_episodes
from mamlkit.rl.workers import SamplerPool


class MLPPolicy(nn.Module):
    """A picklable Gaussian MLP (tanh hidden layers, state-independent std)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64),
                 std: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(obs_dim, width), nn.Tanh()]
            obs_dim = width
        self.net = nn.Sequential(*layers, nn.Linear(obs_dim, act_dim))
        self.log_std = nn.Parameter(torch.full((act_dim,), float(torch.tensor(std).log())))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(obs), self.log_std.exp()


def env_only(env, tasks: list[dict], trajectories: int, horizon: int) -> float:
    """Reset and ``horizon`` steps with random actions drawn beforehand; valid steps/s."""
    g = torch.Generator().manual_seed(0)
    actions = torch.randn(horizon, len(tasks), trajectories, env.action_dim, generator=g) * 0.1
    alive = torch.ones(len(tasks), trajectories)
    steps = 0.0
    start = time.perf_counter()
    env.reset(tasks, trajectories, g)
    for t in range(horizon):
        steps += float(alive.sum())
        _, _, done = env.step(actions[t])
        alive = alive * (~done).float()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["nav2d", "cheetah-vel"])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=0,
                        help="per task (default: 20 for nav2d, 10 for the cheetah)")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--std", type=float, default=1.0, help="policy standard deviation")
    parser.add_argument("--outer", nargs="*", default=[],
                        help="presets whose meta-step without the simulator to time")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for preset in args.outer:
        load = os.getloadavg()
        results[f"outer step {preset}"] = {"seconds": outer_step_seconds(preset),
                                           "load_average": [round(load[0], 2),
                                                            round(os.getloadavg()[0], 2)]}
        print(f"outer step {preset}: {results[f'outer step {preset}']}")
    for name in [] if args.outer else args.envs:
        n = args.trajectories or (20 if name == "nav2d" else 10)
        env = make_batch_env(name, horizon=args.horizon)
        tasks = env.sample_tasks(args.tasks, 0)
        policy = MLPPolicy(env.observation_dim, env.action_dim, std=args.std)
        lengths: list[float] = []
        pools = {w: SamplerPool(name, {"horizon": args.horizon}, workers=w) for w in args.workers}
        for pool in pools.values():
            pool.start()
        times: dict[str, list[float]] = {}
        load = os.getloadavg()
        try:
            for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
                runs = {"env only (1 thread)": None, "sample 1 thread": 1, "sample 2 threads": 2}
                for label, threads in runs.items():
                    torch.set_num_threads(threads or 1)
                    if threads is None:
                        rate = env_only(env, tasks, n, args.horizon)
                    else:
                        start = time.perf_counter()
                        episodes = sample_episodes(env, policy, tasks, n,
                                                   torch.Generator().manual_seed(repeat))
                        rate = float(episodes.mask.sum()) / (time.perf_counter() - start)
                        lengths.append(float(episodes.lengths.mean()))
                    if repeat:
                        times.setdefault(label, []).append(rate)
                torch.set_num_threads(1)
                for w, pool in pools.items():
                    start = time.perf_counter()
                    episodes = pool.sample(policy, tasks, n, torch.Generator().manual_seed(repeat))
                    if repeat:
                        times.setdefault(f"sampler_workers={w + 1}", []).append(
                            float(episodes.mask.sum()) / (time.perf_counter() - start))
        finally:
            for pool in pools.values():
                pool.close()
        key = f"{name} {args.tasks}x{n}xH{args.horizon} std{args.std:g}"
        results[key] = summarise(times, lengths, load)
        for label, rate in results[key]["steps_per_s"].items():
            print(f"{key:34s} {label:28s} {rate['median']:>10,d} steps/s "
                  f"({rate['min']:,d}-{rate['max']:,d})")
        print(f"{key:34s} mean episode length {results[key]['mean_episode_length']:.1f}, load "
              f"average {results[key]['load_average']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


def summarise(times: dict[str, list[float]], lengths: list[float],
              load: tuple[float, ...]) -> dict:
    """Median, min and max of each measurement; the episodes' mean length; the 1-minute load
    average before and after the measurements."""
    rates = {label: {"median": round(statistics.median(r)), "min": round(min(r)),
                     "max": round(max(r))} for label, r in times.items()}
    return {"steps_per_s": rates, "mean_episode_length": statistics.mean(lengths),
            "load_average": [round(load[0], 2), round(os.getloadavg()[0], 2)]}



def outer_step_seconds(preset: str, repeats: int = 2) -> dict[str, float]:
    """Seconds of one meta-step of ``preset`` without the simulator: the sampler is replaced
    by random episodes of the preset's full shape (every episode lives the whole horizon), so
    what is left is the inner adaptation, advantages, and the outer step (TRPO: gradient,
    conjugate gradient with Hessian-vector products through the adaptation, line search)."""
    import tempfile
    from pathlib import Path

    from mamlkit.rl.episodes import Episodes
    from mamlkit.run.config import resolve
    from mamlkit.run.distributed import Context
    from mamlkit.run.steps import RLStep

    config = resolve(preset, {})
    with tempfile.TemporaryDirectory() as folder:
        step = RLStep(config, Context(), Path(folder))
        env, tasks = step.tasks.env, step.tasks
        shape = (config.meta_batch_size, config.trajectories, config.horizon or env.horizon)
        g = torch.Generator().manual_seed(0)

        def fake(policy, task_list, generator, share):
            return Episodes(torch.randn(*shape, env.observation_dim, generator=g),
                            torch.randn(*shape, env.action_dim, generator=g),
                            torch.randn(*shape, generator=g), torch.ones(shape), task_list)

        tasks._sample = fake
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            step.update(torch.Generator().manual_seed(1))
            seconds.append(time.perf_counter() - start)
    return {"median": round(statistics.median(seconds), 2), "min": round(min(seconds), 2),
            "max": round(max(seconds), 2)}


if __name__ == "__main__":
    main()
