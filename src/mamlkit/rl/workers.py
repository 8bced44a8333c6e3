"""Optional worker processes that sample a share of a meta-batch's tasks each.

``SamplerPool(env_name, workers=k)`` keeps ``k`` processes, each with its own batched environment;
``sample`` splits the tasks into ``k + 1`` contiguous chunks, sends one to each worker and samples
the last one in the calling process. Because every task draws from its own generator (seeded as in
``sample_episodes``), the episodes are exactly those of in-process ``sample_episodes`` with the same
generator, whatever ``k``.

The policy travels to the workers by pickling, so it must be picklable (an ``nn.Module`` or a
class instance, not a lambda or closure). A policy with per-task parameters provides
``task_slice(start, stop)`` returning the policy of tasks ``start:stop``; any other policy is
shared by all tasks.

Runs reach it through the config key ``sampler_workers`` (k: this process plus k - 1 workers;
``run.build.build_sampler_pool``), once per torchrun rank: each rank spreads its share of the
meta-batch over its own workers, and ``rollout`` takes the tasks' generators as in-process
``rl.sampling.rollout`` does (their states travel to the workers).

Never hangs, always cleans up: workers start with ``spawn`` (no forked locks or thread pools),
the parent polls with a timeout and checks that workers are alive, a failure in a worker is raised
in the parent with the worker's traceback, and on any error (or ``close``, leaving the ``with``
block, garbage collection, interpreter exit) the workers are stopped, terminated if they do not
stop within 2 s. The next ``sample`` after an error starts fresh workers. As with any ``spawn``
pool, a script that uses workers needs the ``if __name__ == "__main__":`` guard.

Default ``workers=0`` (in-process), chosen by measurement on the 2-core machine shared with
other jobs (``benchmarks/rl_sampling.py``, 64-64 MLP policy, 1 thread per process, steps/s):

    workload                     in-process    1 worker + caller    2 workers + caller
    nav2d 20x20xH100             418k-1.2M     333k-1.0M            246k-829k
    cheetah-vel 20x10xH100       11k-26k       11k-34k              11k-21k
    cheetah-vel 40x20xH200       13.6k         11.8k

    at load 8-9 (both cores busy with other jobs; benchmarks/results/rl/sampling.md):
    cheetah-vel 20x10xH100       8.1k          8.3k                 8.2k
    ant-vel 20x10xH100           1.54k         1.38k                1.43k

Workers pay only for MuJoCo with a free second core (once 1.3x); on a busy machine they tie or
lose, and for 2D navigation the pickling costs more than the sampling. Starting a worker (spawn,
importing torch and MuJoCo) takes a few seconds, once per pool.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import time
import traceback
import weakref
from typing import Any

import numpy as np
import torch

from mamlkit.envs import make_batch_env
from mamlkit.rl.episodes import Episodes
from mamlkit.rl.sampling import PolicyFn, policy_of_tasks, rollout, task_seeds


def _pack(episodes: Episodes) -> tuple[np.ndarray, ...]:
    return (episodes.observations.numpy(), episodes.actions.numpy(), episodes.rewards.numpy(),
            episodes.mask.numpy())


def _generator(state: torch.Tensor) -> torch.Generator:
    generator = torch.Generator()
    generator.set_state(state)
    return generator


def _worker(conn: Any, env_name: str, env_kwargs: dict, threads: int) -> None:
    """Sample chunks until told to stop (``None``) or the parent goes away."""
    torch.set_num_threads(threads)
    env = make_batch_env(env_name, **env_kwargs)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if message is None:
            break
        try:
            policy, tasks, num_trajectories, states, horizon = message
            generators = [_generator(state) for state in states]
            episodes = rollout(env, policy, tasks, num_trajectories, generators, horizon)
            conn.send(("ok", _pack(episodes)))
        except BaseException:  # report everything to the parent
            try:
                conn.send(("error", traceback.format_exc()))
            except (OSError, BrokenPipeError):
                break
    conn.close()


def _shutdown(processes: list, connections: list) -> None:
    """Ask workers to stop, then terminate and kill the ones that do not."""
    for conn in connections:
        try:
            conn.send(None)
        except (OSError, BrokenPipeError, ValueError):
            pass
    deadline = time.monotonic() + 2.0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)
    for conn in connections:
        conn.close()
    processes.clear()
    connections.clear()


class SamplerPool:
    """``sample_episodes`` spread over ``workers`` extra processes (0: all in-process)."""

    def __init__(self, env_name: str, env_kwargs: dict | None = None, workers: int = 0,
                 timeout: float = 600.0, threads: int = 1, start_method: str = "spawn") -> None:
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}.")
        self.env_name = env_name
        self.env_kwargs = dict(env_kwargs or {})
        self.workers = int(workers)
        self.timeout = float(timeout)
        self.threads = int(threads)
        self.env = make_batch_env(env_name, **self.env_kwargs)
        self._context = mp.get_context(start_method)
        self.processes: list = []
        self._connections: list = []
        self._finalizer = weakref.finalize(self, _shutdown, self.processes, self._connections)

    def __enter__(self) -> SamplerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent); a later ``sample`` starts new ones."""
        _shutdown(self.processes, self._connections)

    def start(self) -> None:
        """Start the workers now rather than on the first ``sample``."""
        while len(self.processes) < self.workers:
            parent, child = self._context.Pipe()
            # every start method's context has Process; typeshed's BaseContext does not say so
            process = self._context.Process(  # type: ignore[attr-defined]
                target=_worker, args=(child, self.env_name, self.env_kwargs, self.threads),
                daemon=True, name=f"mamlkit-sampler-{len(self.processes)}")
            process.start()
            child.close()
            self.processes.append(process)
            self._connections.append(parent)

    def sample(self, policy: PolicyFn, tasks: list[dict], num_trajectories: int,
               generator: torch.Generator, horizon: int | None = None) -> Episodes:
        """The episodes ``sample_episodes(env, policy, tasks, ...)`` would give, in parallel."""
        generators = [torch.Generator().manual_seed(s) for s in task_seeds(generator, len(tasks))]
        return self.rollout(policy, tasks, num_trajectories, generators, horizon)

    def rollout(self, policy: PolicyFn, tasks: list[dict], num_trajectories: int,
                generators: list[torch.Generator], horizon: int | None = None) -> Episodes:
        """The episodes ``rollout(env, policy, tasks, ...)`` would give, in parallel: each
        worker gets its tasks' generators (their states) and its share of the policy."""
        if len(generators) != len(tasks):
            raise ValueError(f"rollout needs one generator per task: {len(tasks)} tasks, "
                             f"{len(generators)} generators.")
        chunks = [c for c in np.array_split(np.arange(len(tasks)), self.workers + 1) if len(c)]
        if len(chunks) == 1 or self.workers == 0:
            return rollout(self.env, policy, tasks, num_trajectories, generators, horizon)
        try:
            self.start()
            remote = chunks[:-1]
            for conn, chunk in zip(self._connections, remote, strict=False):
                start, stop = int(chunk[0]), int(chunk[-1]) + 1
                states = [g.get_state() for g in generators[start:stop]]
                self._send(conn, (policy_of_tasks(policy, start, stop), tasks[start:stop],
                                  num_trajectories, states, horizon))
            start, stop = int(chunks[-1][0]), int(chunks[-1][-1]) + 1
            local = rollout(self.env, policy_of_tasks(policy, start, stop), tasks[start:stop],
                            num_trajectories, generators[start:stop], horizon)
            parts = [self._receive(i) for i in range(len(remote))]
        except BaseException:
            self.close()
            raise
        episodes = []
        for p, c in zip(parts, remote, strict=True):
            observations, actions, rewards, mask = (torch.from_numpy(a) for a in p)
            episodes.append(Episodes(observations, actions, rewards, mask,
                                     tasks[int(c[0]):int(c[-1]) + 1]))
        return Episodes.cat([*episodes, local])

    @staticmethod
    def _send(conn: Any, message: tuple) -> None:
        try:
            conn.send(message)
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise ValueError(
                "SamplerPool sends the policy to its workers by pickling: pass a picklable"
                " policy (an nn.Module or class instance, not a lambda or closure), or use"
                f" workers=0 ({error}).") from error

    def _receive(self, index: int) -> tuple[np.ndarray, ...]:
        conn, process = self._connections[index], self.processes[index]
        deadline = time.monotonic() + self.timeout
        while not conn.poll(0.05):
            if not process.is_alive():
                raise RuntimeError(f"Sampler worker {index} died (exit code {process.exitcode}); "
                                   "run with workers=0 to see the error in-process.")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Sampler worker {index} sent nothing for {self.timeout:.0f} s;"
                                   " raise SamplerPool(timeout=...) or use workers=0.")
        try:
            status, payload = conn.recv()
        except EOFError as error:
            raise RuntimeError(f"Sampler worker {index} closed its pipe.") from error
        if status != "ok":
            raise RuntimeError(f"Sampler worker {index} failed:\n{payload}")
        return payload
