"""The MuJoCo batched environments step their copies in threads with the same results, bit for
bit, as in one thread: for the half-cheetah and for the ant, whose copies end."""

import pickle

import pytest
import torch

pytest.importorskip("mujoco")

from mamlkit.envs import make_batch_env  # noqa: E402
from mamlkit.rl import sample_episodes  # noqa: E402
from mamlkit.run.build import env_kwargs  # noqa: E402
from mamlkit.run.config import ConfigError, resolve  # noqa: E402


def _jumping(obs):
    """Large random actions: some ants jump out of their healthy height and end early."""
    return torch.zeros(*obs.shape[:-1], 8), torch.full((*obs.shape[:-1], 8), 2.0)


def _episodes(name: str, threads: int, policy, horizon: int):
    env = make_batch_env(name, horizon=horizon, threads=threads)
    tasks = env.sample_tasks(3, 0)
    return sample_episodes(env, policy, tasks, 5, torch.Generator().manual_seed(4))


@pytest.mark.parametrize("threads", [2, 3, 16])
def test_threaded_half_cheetahs_equal_one_thread(threads):
    policy = torch.nn.Linear(17, 6)

    def act(obs):
        return policy(obs), torch.full((*obs.shape[:-1], 6), 0.5)

    one = _episodes("cheetah-dir", 1, act, 20)
    many = _episodes("cheetah-dir", threads, act, 20)
    for field in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(one, field), getattr(many, field)), field


def test_threaded_ants_equal_one_thread_when_copies_end():
    one = _episodes("ant-dir", 1, _jumping, 60)
    many = _episodes("ant-dir", 2, _jumping, 60)
    assert (one.mask == 0).any()  # some copies ended: the threads skip them as one thread does
    for field in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(one, field), getattr(many, field)), field


def test_a_threaded_environment_pickles_and_steps_after():
    env = make_batch_env("cheetah-vel", horizon=3, threads=2)
    env.reset(env.sample_tasks(2, 0), 2, torch.Generator().manual_seed(0))
    env.step(torch.zeros(2, 2, 6))  # its pool exists now
    copy = pickle.loads(pickle.dumps(env))
    assert copy.threads == 2
    copy.reset(copy.sample_tasks(2, 0), 2, torch.Generator().manual_seed(0))
    assert copy.step(torch.zeros(2, 2, 6))[0].shape == (2, 2, 17)


def test_frame_skip_is_the_simulator_steps_per_action():
    """One action at frame_skip 1, five times over, lands where one action at 5 does."""
    one = make_batch_env("cheetah-dir", horizon=5, frame_skip=1)
    five = make_batch_env("cheetah-dir", horizon=1)
    tasks = one.sample_tasks(2, 0)
    for env in (one, five):
        env.reset(tasks, 3, torch.Generator().manual_seed(0))
    action = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        obs_one, _, _ = one.step(action)
    obs_five, _, _ = five.step(action)
    assert torch.equal(obs_one, obs_five)
    assert not torch.equal(one.reset(tasks, 3, torch.Generator().manual_seed(0)), obs_one)
    with pytest.raises(ValueError, match="frame_skip must be at least 1"):
        make_batch_env("ant-dir", frame_skip=0)


def test_the_config_sets_the_frame_skip_of_locomotion_tasks_only():
    assert env_kwargs(resolve("cheetah-dir", {}))["frame_skip"] == 1  # the paper's code
    assert env_kwargs(resolve("ant-dir", {}))["frame_skip"] == 2  # 0.02 s, as the paper's ant
    for quick in ("cheetah-dir-quick", "cheetah-vel-quick", "ant-dir-quick", "ant-vel-quick"):
        assert "frame_skip" not in env_kwargs(resolve(quick, {}))  # gymnasium's 5
    assert env_kwargs(resolve("ant-vel-quick", {"frame_skip": 2}))["frame_skip"] == 2
    with pytest.raises(ConfigError, match="frame_skip"):
        resolve("nav2d", {"frame_skip": 1})


def test_the_runs_threads_step_the_simulators():
    assert env_kwargs(resolve("cheetah-dir-quick", {"threads": 2}))["threads"] == 2
    assert "threads" not in env_kwargs(resolve("cheetah-dir-quick", {"threads": 1}))
    with pytest.raises(ValueError, match="threads must be at least 1"):
        make_batch_env("cheetah-dir", threads=0)
