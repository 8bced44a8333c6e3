"""The ant tasks: rewards by hand from the MuJoCo state, the batched version against gymnasium's
Ant-v5, termination as an absorbing state, seeding, and the presets."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_envs import gymnasium_copies_of

from mamlkit.cli import main
from mamlkit.envs import make_batch_env
from mamlkit.envs.ant import AntDir, AntVel
from mamlkit.rl import sample_episodes
from mamlkit.run.config import load_preset


def _by_hand(kind, value, x_before, x_after, action, cfrc_ext):
    """The reference code's reward, written out: forward term, bonuses, control and contact
    costs (contact forces clipped to [-1, 1]); gymnasium's step is 5 frames of 0.01 s."""
    v = (x_after - x_before) / 0.05
    forward = -abs(v - value) + 1.0 if kind == "velocity" else value * v
    a = np.clip(action, -1, 1)
    contact = np.clip(cfrc_ext, -1, 1)
    return forward + 0.05 - 0.5e-2 * np.sum(a * a) - 0.5e-3 * np.sum(contact * contact)


@pytest.mark.parametrize("env_id, kind, task", [("mamlkit/AntVel-v0", "velocity",
                                                 {"velocity": 1.7}),
                                                ("mamlkit/AntDir-v0", "direction",
                                                 {"direction": -1})])
def test_ant_rewards_by_hand_from_the_mujoco_state(env_id, kind, task):
    env = gym.make(env_id)
    assert isinstance(env.unwrapped, AntVel if kind == "velocity" else AntDir)
    assert env.spec.max_episode_steps == 200
    obs, _ = env.reset(seed=3, options={"task": task})
    assert obs.shape == (105,)
    data, rng = env.unwrapped.data, np.random.default_rng(0)
    for _ in range(6):
        action = rng.normal(size=8) * 0.8  # some entries beyond [-1, 1]: clipped
        x_before = data.xpos[1, 0]
        _, reward, terminated, _, info = env.step(action)
        expected = _by_hand(kind, task[kind], x_before, data.xpos[1, 0], action, data.cfrc_ext)
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert terminated == (not 0.2 <= data.qpos[2] <= 1.0)
        assert info["task"] == task
    assert np.any(data.cfrc_ext != 0)  # contact forces are computed (mj_rnePostConstraint)
    env.close()


def test_ant_task_sampling():
    tasks = make_batch_env("ant-vel").sample_tasks(500, torch.Generator().manual_seed(0))
    v = torch.tensor([t["velocity"] for t in tasks])
    assert 0 <= v.min() < 0.05 and 2.95 < v.max() <= 3
    assert tasks[:3] == AntVel.sample_tasks(3, 0)
    directions = make_batch_env("ant-dir").sample_tasks(200, 0)
    assert {t["direction"] for t in directions} == {-1, 1}
    assert 70 < sum(t["direction"] == 1 for t in directions) < 130


@pytest.mark.parametrize("name", ["ant-vel", "ant-dir"])
def test_ant_batch_equals_gymnasium(name):
    """Same start states and actions: the batch env gives gymnasium's observations, rewards
    and terminations, copy by copy, until each copy ends."""
    batch = make_batch_env(name, horizon=40)
    tasks = batch.sample_tasks(2, 5)
    batch.reset(tasks, 2, torch.Generator().manual_seed(0))
    env_id = "mamlkit/AntVel-v0" if name == "ant-vel" else "mamlkit/AntDir-v0"
    singles = gymnasium_copies_of(batch, env_id, tasks)
    rng, ended = np.random.default_rng(1), [False] * 4
    for _ in range(40):
        actions = rng.normal(size=(2, 2, 8)) * 1.5
        obs, reward, done = batch.step(torch.tensor(actions))
        for i, env in enumerate(singles):
            if ended[i]:
                assert done[i // 2, i % 2] and reward[i // 2, i % 2] == 0
                continue
            o, r, terminated, *_ = env.step(actions[i // 2, i % 2])
            assert torch.equal(obs[i // 2, i % 2], torch.tensor(o, dtype=torch.float32))
            assert float(reward[i // 2, i % 2]) == pytest.approx(r, rel=1e-6, abs=1e-6)
            assert bool(done[i // 2, i % 2]) == terminated
            ended[i] = terminated
    assert any(ended)  # actions of std 1.5 make the ant jump out of its healthy height


def test_ant_termination_is_absorbing():
    """A copy whose torso leaves [0.2, 1.0] ends: that step earns its reward, later steps earn
    0, its observation stays, and the sampler masks the rest; the other copy goes on."""
    batch = make_batch_env("ant-dir", horizon=5)
    batch.reset([{"direction": 1}], 2, torch.Generator().manual_seed(0))
    qpos = np.stack([d.qpos.copy() for d in batch._datas])
    qvel = np.stack([d.qvel.copy() for d in batch._datas])
    qpos[0, 2] = 1.6  # high above the healthy range, falling for many steps
    batch.set_state(qpos.reshape(1, 2, -1), qvel.reshape(1, 2, -1))
    obs, reward, done = batch.step(torch.zeros(1, 2, 8))
    assert done.tolist() == [[True, False]] and reward[0, 0] != 0
    for _ in range(3):
        later, reward, done = batch.step(torch.ones(1, 2, 8))
        assert done[0, 0] and reward[0, 0] == 0 and torch.equal(later[0, 0], obs[0, 0])
        assert not torch.equal(later[0, 1], obs[0, 1])

    def still(o):
        return torch.zeros(*o.shape[:-1], 8), torch.full((*o.shape[:-1], 8), 1e-3)

    tasks = [{"direction": 1}, {"direction": -1}]
    episodes = sample_episodes(make_batch_env("ant-dir", horizon=50), still, tasks, 2,
                               torch.Generator().manual_seed(0))
    assert torch.all(episodes.mask == 1)  # standing still keeps the ant healthy

    def jump(o):  # large random actions: the ant jumps above its healthy height
        return torch.zeros(*o.shape[:-1], 8), torch.full((*o.shape[:-1], 8), 2.0)

    episodes = sample_episodes(make_batch_env("ant-dir", horizon=60), jump, tasks, 2,
                               torch.Generator().manual_seed(0))
    lengths = episodes.lengths
    assert torch.all(lengths < 60) and torch.all(lengths >= 1)
    steps = torch.arange(60).expand_as(episodes.mask)
    assert torch.equal(episodes.mask, (steps < lengths[..., None]).float())
    assert torch.all(episodes.rewards[episodes.mask == 0] == 0)
    assert torch.isfinite(episodes.observations).all()


def test_ant_seeding_gives_identical_rollouts():
    env = make_batch_env("ant-vel", horizon=15)
    tasks = env.sample_tasks(2, 0)
    policy = torch.nn.Linear(105, 8)

    def act(obs):
        return policy(obs), torch.full((*obs.shape[:-1], 8), 0.5)

    with torch.no_grad():
        a = sample_episodes(env, act, tasks, 3, torch.Generator().manual_seed(1))
        b = sample_episodes(env, act, tasks, 3, torch.Generator().manual_seed(1))
        c = sample_episodes(env, act, tasks, 3, torch.Generator().manual_seed(2))
    for name in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.observations, c.observations)
    assert a.observations.shape == (2, 3, 15, 105)


def test_ant_presets_load_and_one_iteration_trains(tmp_path):
    for name in ("ant-vel", "ant-dir", "ant-vel-quick", "ant-dir-quick"):
        config = load_preset(name)
        assert config.task == name.removesuffix("-quick")
    paper = load_preset("ant-dir")  # the paper: 40 rollouts per step for the ant forward/backward
    assert (paper.meta_batch_size, paper.trajectories, paper.horizon, paper.inner_lr,
            paper.outer, paper.policy_hidden) == (40, 40, 200, 0.1, "trpo", [100, 100])
    assert load_preset("ant-vel").trajectories == 20
    assert paper.eval_inner_lr == [0.1, 0.05]  # 0.1 for the first step, then 0.05
    out = tmp_path / "ant"
    tiny = ["--set", "iterations=1", "--set", "meta_batch_size=2", "--set", "trajectories=2",
            "--set", "horizon=10", "--set", "val_tasks=1", "--set", "policy_hidden=[8]"]
    assert main(["train", "ant-dir-quick", "--out", str(out), "--no-progress", *tiny]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["iteration"] == 1 and 0 < record["env_steps"] <= 2 * 2 * 2 * 10
    assert np.isfinite(record["post_return"])
