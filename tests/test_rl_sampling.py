"""Returns, GAE, normalisation, the linear baseline, batched sampling and the worker pool."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from mamlkit.envs import make_batch_env
from mamlkit.envs.navigation import expert_action
from mamlkit.rl import (
    Episodes,
    baseline_features,
    discounted_returns,
    fit_linear,
    gae,
    linear_baseline,
    normalize,
    rollout,
    sample_episodes,
    task_generators,
)
from mamlkit.rl.workers import SamplerPool

R = torch.tensor([[[1.0, 2.0, 3.0]]])
V = torch.tensor([[[0.5, 1.0, 2.0]]])
FULL = torch.ones(1, 1, 3)
EARLY = torch.tensor([[[1.0, 1.0, 0.0]]])


def test_discounted_returns_by_hand():
    assert torch.allclose(discounted_returns(R, FULL, 0.5), torch.tensor([[[2.75, 3.5, 3.0]]]))
    assert torch.allclose(discounted_returns(R, EARLY, 0.5), torch.tensor([[[2.0, 2.0, 0.0]]]))
    assert torch.allclose(discounted_returns(R, FULL, 0.0), R)
    assert torch.allclose(discounted_returns(R, FULL, 1.0), torch.tensor([[[6.0, 5.0, 3.0]]]))


def test_gae_by_hand():
    # deltas: 1 + .5*1 - .5 = 1, 2 + .5*2 - 1 = 2, 3 - 2 = 1
    assert torch.allclose(gae(R, V, FULL, 0.5, 0.5), torch.tensor([[[1.5625, 2.25, 1.0]]]))
    assert torch.allclose(gae(R, V, FULL, 0.5, 0.0), torch.tensor([[[1.0, 2.0, 1.0]]]))
    # early end after step 1: V_2 does not count, delta_1 = 2 - 1 = 1
    assert torch.allclose(gae(R, V, EARLY, 0.5, 0.5), torch.tensor([[[1.25, 1.0, 0.0]]]))


@pytest.mark.parametrize("discount", [0.0, 0.9, 1.0])
def test_gae_lambda_one_is_returns_minus_values(discount):
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 4, 7, generator=g), torch.randn(3, 4, 7, generator=g)
    mask = (torch.arange(7) < torch.randint(1, 8, (3, 4, 1), generator=g)).float()
    expected = (discounted_returns(rewards, mask, discount) - values) * mask
    assert torch.allclose(gae(rewards, values, mask, discount, 1.0), expected, atol=1e-5)


def test_normalize_per_task_over_valid_steps():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(2, 3, 5, generator=g) * torch.tensor([1.0, 50.0]).view(2, 1, 1) + 3
    mask = torch.ones(2, 3, 5)
    mask[0, 0, 3:] = 0
    out = normalize(adv, mask)
    for i in range(2):
        valid = out[i][mask[i].bool()]
        assert abs(float(valid.mean())) < 1e-5
        assert abs(float(valid.std(unbiased=False)) - 1) < 1e-4
    assert torch.all(out[0, 0, 3:] == 0)


def _episodes_with_returns(target, obs, mask, discount):
    """Rewards whose discounted returns are exactly ``target`` on the valid steps."""
    nxt = torch.zeros_like(target)
    nxt[..., :-1] = (target * mask)[..., 1:]
    rewards = (target - discount * nxt) * mask
    return Episodes(obs, torch.zeros(*obs.shape[:3], 1), rewards, mask)


def test_linear_baseline_recovers_linear_target():
    g = torch.Generator().manual_seed(0)
    obs = torch.rand(3, 4, 20, 2, generator=g) * 2 - 1
    mask = torch.ones(3, 4, 20)
    mask[1, 2, 12:] = 0
    features = baseline_features(obs, mask).double()
    weights = torch.randn(3, features.shape[-1], generator=g, dtype=torch.float64)
    target = torch.einsum("tnhf,tf->tnh", features, weights).float()
    episodes = _episodes_with_returns(target, obs, mask, 0.9)
    values = linear_baseline(episodes, 0.9, reg=1e-10)
    assert torch.allclose(values, target * mask, atol=2e-3)


def test_cross_fit_baseline_ignores_an_episodes_own_return():
    """Cross-fitted, each half's values come from a ridge fit on the other half alone: an
    episode's own rewards cannot move its baseline (in sample they do)."""
    g = torch.Generator().manual_seed(2)
    obs = torch.randn(2, 5, 8, 3, generator=g)
    mask = torch.ones(2, 5, 8)
    mask[0, 4, 5:] = 0
    rewards = torch.randn(2, 5, 8, generator=g) * mask
    episodes = Episodes(obs, torch.zeros(2, 5, 8, 1), rewards, mask)
    values = linear_baseline(episodes, 0.9, cross_fit=True)
    features = baseline_features(obs, mask).double()
    returns = discounted_returns(rewards, mask, 0.9)
    for apply_to, fit_on in ((slice(0, 2), slice(2, 5)), (slice(2, 5), slice(0, 2))):
        coeffs = fit_linear(features[:, fit_on].reshape(2, -1, 10),
                            returns[:, fit_on].reshape(2, -1), 1e-5)
        expected = torch.einsum("tnhf,tf->tnh", features[:, apply_to], coeffs)
        assert torch.allclose(values[:, apply_to], expected.float() * mask[:, apply_to],
                              atol=1e-5)
    changed = rewards.clone()
    changed[:, 0] += 5.0 * mask[:, 0]
    moved = Episodes(obs, episodes.actions, changed, mask)
    assert torch.equal(linear_baseline(moved, 0.9, cross_fit=True)[:, :2], values[:, :2])
    in_sample = linear_baseline(episodes, 0.9)
    assert not torch.allclose(linear_baseline(moved, 0.9)[:, 0], in_sample[:, 0])


def test_batched_fit_equals_per_task_lstsq():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 30, 6, generator=g, dtype=torch.float64)
    y = torch.randn(4, 30, generator=g, dtype=torch.float64)
    coeffs = fit_linear(x, y, reg=1e-3)
    for i in range(4):
        xi, yi = x[i].numpy(), y[i].numpy()
        expected = np.linalg.lstsq(xi.T @ xi + 1e-3 * np.eye(6), xi.T @ yi, rcond=None)[0]
        assert np.allclose(coeffs[i].numpy(), expected, atol=1e-8)


def test_fit_raises_ridge_until_finite():
    x = torch.zeros(3, 5, 3, dtype=torch.float64)  # task 0 fully masked: singular without ridge
    x[1] = torch.randn(5, 3, dtype=torch.float64)
    x[2, 0, 0] = 1e200  # the gram overflows to inf at every ridge: left at zero
    y = torch.ones(3, 5, dtype=torch.float64)
    coeffs = fit_linear(x, y, reg=0.0, attempts=3)
    assert torch.isfinite(coeffs).all()
    assert torch.all(coeffs[0] == 0) and torch.all(coeffs[2] == 0)
    expected = torch.linalg.lstsq(x[1], y[1]).solution
    assert torch.allclose(coeffs[1], expected)


class GaussianMLP(nn.Module):
    """A small picklable policy (workers need one), counting its calls."""

    def __init__(self, obs_dim, act_dim, std=0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, 16), nn.Tanh(), nn.Linear(16, act_dim))
        self.log_std = nn.Parameter(torch.full((act_dim,), float(np.log(std))))
        self.calls = 0

    def forward(self, obs):
        self.calls += 1
        return self.net(obs), self.log_std.exp().expand(*obs.shape[:-1], -1)


def test_sample_episodes_shapes_determinism_and_one_call_per_task_and_step():
    env = make_batch_env("nav2d", done_threshold=None)
    tasks = env.sample_tasks(5, torch.Generator().manual_seed(0))
    policy = GaussianMLP(2, 2)
    a = sample_episodes(env, policy, tasks, 3, torch.Generator().manual_seed(7))
    assert policy.calls == 100 * 5
    assert a.observations.shape == (5, 3, 100, 2) and a.actions.shape == (5, 3, 100, 2)
    assert a.rewards.shape == a.mask.shape == (5, 3, 100) and a.returns.shape == (5, 3)
    assert a.observations.dtype == torch.float32 and torch.all(a.mask == 1)
    assert not a.observations.requires_grad and not a.actions.requires_grad
    assert torch.all(a.observations[:, :, 0] == 0)  # nav2d starts at the origin
    b = sample_episodes(env, policy, tasks, 3, torch.Generator().manual_seed(7))
    c = sample_episodes(env, policy, tasks, 3, torch.Generator().manual_seed(8))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.actions, c.actions)
    assert a[1:3].num_tasks == 2 and a[1:3].tasks == tasks[1:3]
    assert torch.equal(a[1].rewards, a.rewards[1:2])
    assert a.mean_return() == pytest.approx(float(a.returns.mean()))


class Expert:
    """Steps toward each task's goal: a policy that knows its tasks, so it gives ``task_slice``."""

    def __init__(self, goals):
        self.goals = goals

    def __call__(self, obs):
        return expert_action(obs, self.goals), torch.zeros_like(obs)

    def task_slice(self, start, stop):
        return Expert(self.goals[start:stop])


def test_early_ends_are_masked():
    env = make_batch_env("nav2d")
    tasks = [{"goal": [0.25, -0.05]}, {"goal": [-0.5, 0.5]}]
    episodes = sample_episodes(env, Expert(env.task_tensor(tasks).unsqueeze(1)), tasks, 2,
                               torch.Generator().manual_seed(0))
    assert episodes.horizon == 100
    assert torch.equal(episodes.lengths, torch.tensor([[3.0, 3.0], [5.0, 5.0]]))
    assert torch.all(episodes.rewards[0, :, 3:] == 0) and torch.all(episodes.mask[0, :, 3:] == 0)
    assert float(episodes.rewards[0, 0, 2]) == pytest.approx(0.0, abs=1e-6)


def test_tasks_do_not_depend_on_their_batch():
    """Each task's randomness is its own, which is what lets workers split the tasks."""
    env = make_batch_env("cheetah-dir", horizon=5)
    tasks = env.sample_tasks(3, 0)
    policy = GaussianMLP(17, 6, std=0.5)
    gens = task_generators(torch.Generator().manual_seed(0), 3)
    states = [g.get_state() for g in gens]
    whole = rollout(env, policy, tasks, 2, gens)
    for g, s in zip(gens, states, strict=True):
        g.set_state(s)
    part = rollout(env, policy, tasks[1:], 2, gens[1:])
    assert torch.equal(whole.observations[1:], part.observations)
    assert torch.equal(whole.rewards[1:], part.rewards)


class LayoutSensitive(GaussianMLP):
    """A policy whose arithmetic, like a BLAS kernel's, depends on how many tasks share the call
    and on where their observations sit in memory (here openly, there in the low bits)."""

    def forward(self, obs):
        mean, std = super().forward(obs)
        return mean + 1e-3 * (obs.shape[0] + obs.data_ptr() % 64 / 4), std


def test_a_tasks_actions_do_not_depend_on_the_policys_batch_layout():
    """The policy runs on each task's own fresh copy of its observations, so a task samples the
    same episodes alone, in a share, or with the whole meta-batch, whatever the kernels do."""
    env = make_batch_env("nav2d", done_threshold=None)
    tasks = env.sample_tasks(4, torch.Generator().manual_seed(0))
    policy = LayoutSensitive(2, 2)
    gens = lambda: task_generators(torch.Generator().manual_seed(3), 4)  # noqa: E731
    whole = rollout(env, policy, tasks, 3, gens())
    for start, stop in ((0, 1), (1, 3), (3, 4)):
        part = rollout(env, policy, tasks[start:stop], 3, gens()[start:stop])
        assert torch.equal(whole.actions[start:stop], part.actions), (start, stop)
        assert torch.equal(whole.observations[start:stop], part.observations), (start, stop)


class SlicedPolicy(GaussianMLP):
    """Per-task mean offsets, sliced for the workers' chunks."""

    def __init__(self, offsets):
        super().__init__(2, 2)
        self.offsets = offsets

    def forward(self, obs):
        mean, std = super().forward(obs)
        return mean + self.offsets[:, None, :], std

    def task_slice(self, start, stop):
        sliced = SlicedPolicy(self.offsets[start:stop])
        sliced.load_state_dict(self.state_dict())
        return sliced


class FailsInWorker(GaussianMLP):
    def __init__(self):
        super().__init__(2, 2)
        self.parent = os.getpid()

    def forward(self, obs):
        if os.getpid() != self.parent:
            raise RuntimeError("policy exploded")
        return super().forward(obs)


@pytest.mark.slow
def test_pool_matches_in_process_and_closes_workers():
    env = make_batch_env("nav2d")
    tasks = env.sample_tasks(5, 0)
    policy = SlicedPolicy(torch.randn(5, 2) * 0.05)
    expected = sample_episodes(env, policy, tasks, 3, torch.Generator().manual_seed(4))
    with SamplerPool("nav2d", workers=1) as pool:
        got = pool.sample(policy, tasks, 3, torch.Generator().manual_seed(4))
        processes = list(pool.processes)
        assert len(processes) == 1 and processes[0].is_alive()
        with pytest.raises(RuntimeError, match="worker 0 failed(.|\\n)*policy exploded"):
            pool.sample(FailsInWorker(), tasks, 3, torch.Generator())
        assert not processes[0].is_alive() and pool.processes == []
        with pytest.raises(ValueError, match="picklable"):
            pool.sample(lambda obs: (obs, obs), tasks, 3, torch.Generator())
        processes += pool.processes
        assert pool.processes == []
        with pytest.raises(KeyError):
            pool.start()
            processes += pool.processes
            raise KeyError("error in the caller's with block")
    assert not any(p.is_alive() for p in processes)
    for name in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert got.tasks == tasks


def test_pool_reports_a_dead_worker():
    with SamplerPool("nav2d", workers=1, timeout=60) as pool:
        pool.start()
        pool.processes[0].kill()
        pool.processes[0].join()
        with pytest.raises((RuntimeError, BrokenPipeError)):
            pool.sample(GaussianMLP(2, 2), [{"goal": [0.1, 0.1]}] * 2, 2, torch.Generator())
        assert pool.processes == []


@pytest.mark.slow
def test_sampler_workers_train_and_evaluate_as_in_process(tmp_path, monkeypatch):
    """``sampler_workers=2`` (one spawned worker) gives the run of in-process sampling, bit for
    bit: every task keeps its own generator and the workers get their tasks' slice of the
    adapted parameters. The workers are gone once the run's objects are."""
    import gc
    import json
    import multiprocessing

    from safetensors.torch import load_file

    from mamlkit.cli import main

    tiny = ["--no-progress", "--set", "iterations=2", "--set", "meta_batch_size=3",
            "--set", "trajectories=2", "--set", "horizon=15", "--set", "policy_hidden=[8]",
            "--set", "val_tasks=2", "--set", "val_every=2", "--set", "cg_iters=2",
            "--set", "eval_tasks=3"]
    started = []
    start = SamplerPool.start
    monkeypatch.setattr(SamplerPool, "start", lambda pool: (started.append(pool.workers),
                                                            start(pool)))
    runs = {}
    for workers in (1, 2):
        run = tmp_path / f"w{workers}"
        args = [*tiny, "--set", f"sampler_workers={workers}"]
        assert main(["train", "cheetah-vel", "--out", str(run), *args]) == 0
        assert main(["eval", str(run), "--tasks", "3"]) == 0
        pointer = (run / "checkpoints" / "latest").read_text().strip()
        runs[workers] = (load_file(run / "checkpoints" / pointer / "model.safetensors"),
                         [json.loads(line) for line in (run / "metrics.jsonl").read_text()
                          .splitlines()], json.loads((run / "eval.json").read_text())["steps"])
    (w1, m1, e1), (w2, m2, e2) = runs[1], runs[2]
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    drop = ("seconds", "env_steps_per_s", "peak_mem_mb")
    assert [{k: v for k, v in r.items() if k not in drop} for r in m1] == \
        [{k: v for k, v in r.items() if k not in drop} for r in m2]
    assert e1 == e2 and started and set(started) == {1}  # only the second run used workers
    gc.collect()
    assert multiprocessing.active_children() == []


def test_sampler_workers_key_is_checked():
    from mamlkit.run.build import build_sampler_pool
    from mamlkit.run.config import ConfigError, resolve

    assert build_sampler_pool(resolve("nav2d", {"sampler_workers": 0})) is None
    assert build_sampler_pool(resolve("nav2d", {"sampler_workers": 1})) is None
    pool = build_sampler_pool(resolve("nav2d", {"sampler_workers": 3}))
    assert pool.workers == 2 and pool.processes == []  # workers start at the first sample
    with pytest.raises(ConfigError, match="sampler_workers"):
        resolve("nav2d", {"sampler_workers": -1})
