"""The MuJoCo batched environments step their copies in threads with the same results, bit for
bit, as in one thread: for the half-cheetah and for the ant, whose copies end."""

import pickle

import pytest
import torch

pytest.importorskip("mujoco")

from mamlkit.envs import make_batch_env  # noqa: E402
from mamlkit.rl import sample_episodes  # noqa: E402
from mamlkit.run.build import env_kwargs  # noqa: E402
from mamlkit.run.config import resolve  # noqa: E402


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


def test_the_runs_threads_step_the_simulators():
    assert env_kwargs(resolve("cheetah-dir-quick", {"threads": 2}))["threads"] == 2
    assert "threads" not in env_kwargs(resolve("cheetah-dir-quick", {"threads": 1}))
    with pytest.raises(ValueError, match="threads must be at least 1"):
        make_batch_env("cheetah-dir", threads=0)
