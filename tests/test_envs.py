"""Navigation2D and the half-cheetah tasks: rewards, clipping, task sampling, gymnasium ids, and
the batched versions against the single gymnasium environments."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from mamlkit.envs import Navigation2D, expert_action, make_batch_env
from mamlkit.envs.half_cheetah import CTRL_COST, HalfCheetahDir, HalfCheetahVel


def test_nav2d_rewards_clipping_and_done():
    for kind in ("distance", "squared"):
        env = make_batch_env("nav2d", reward=kind)
        obs = env.reset([{"goal": [0.3, 0.4]}, {"goal": [-0.1, 0.0]}], 2)
        assert obs.shape == (2, 2, 2) and torch.all(obs == 0)
        actions = torch.tensor([[[1.0, -0.05], [0.0, 0.0]], [[-0.1, 0.0], [-5.0, 5.0]]])
        obs, reward, done = env.step(actions)
        assert torch.allclose(obs, torch.tensor([[[0.1, -0.05], [0.0, 0.0]],
                                                 [[-0.1, 0.0], [-0.1, 0.1]]]))
        squared = torch.tensor([[0.2**2 + 0.45**2, 0.5**2], [0.0, 0.1**2]])
        expected = -squared if kind == "squared" else -squared.sqrt()
        assert torch.allclose(reward, expected, atol=1e-6)
        assert done.tolist() == [[False, False], [True, False]]
    with pytest.raises(ValueError, match="reward"):
        make_batch_env("nav2d", reward="manhattan")


def test_nav2d_action_scale_maps_the_policys_units_onto_the_clipped_step():
    """rllab's normalize (the paper's code): policy action 1 is a step of 0.1, then the clip."""
    env = make_batch_env("nav2d", action_scale=0.1)
    env.reset([{"goal": [0.3, 0.4]}], 3)
    obs, _, _ = env.step(torch.tensor([[[0.5, -1.0], [3.0, -0.2], [1e-3, 0.0]]]))
    assert torch.allclose(obs, torch.tensor([[[0.05, -0.1], [0.1, -0.02], [1e-4, 0.0]]]))
    assert torch.equal(env.expert_actions(), torch.ones(1, 3, 2))  # full speed, policy units
    env.reset([{"goal": [0.03, -0.01]}], 1)
    assert torch.allclose(env.expert_actions(), torch.tensor([[[0.3, -0.1]]]))
    gym_env = gym.make("mamlkit/Navigation2D-v0", action_scale=0.1)
    assert np.allclose(gym_env.action_space.high, 1.0)
    gym_env.reset(options={"task": {"goal": [0.3, 0.4]}})
    gym_obs, *_ = gym_env.step(np.array([0.5, -1.0], dtype=np.float32))
    assert np.allclose(gym_obs, [0.05, -0.1])
    for bad in (0.0, -1.0, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="action_scale"):
            make_batch_env("nav2d", action_scale=bad)


def test_nav2d_tasks_ranges_seeding_and_expert():
    env = make_batch_env("nav2d")
    tasks = env.sample_tasks(2000, torch.Generator().manual_seed(3))
    goals = env.task_tensor(tasks)
    assert goals.shape == (2000, 2)
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and goals.min() < -0.49 < 0.49 < goals.max()
    assert tasks == env.sample_tasks(2000, torch.Generator().manual_seed(3))
    assert tasks[:5] == Navigation2D.sample_tasks(5, 3)
    assert tasks != env.sample_tasks(2000, torch.Generator().manual_seed(4))
    obs = torch.tensor([[0.0, 0.0], [0.28, 0.02]])
    goal = torch.tensor([0.3, -0.4])
    assert torch.allclose(expert_action(obs, goal), torch.tensor([[0.1, -0.1], [0.02, -0.1]]))


def test_gymnasium_navigation():
    env = gym.make("mamlkit/Navigation2D-v0", reward="squared")
    obs, _ = env.reset(seed=0, options={"task": {"goal": [0.05, 0.0]}})
    assert obs.dtype == np.float32 and np.all(obs == 0)
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0], dtype=np.float32))
    assert np.allclose(obs, [0.1, 0.0]) and reward == pytest.approx(-0.05**2)
    assert not terminated and not truncated and info["task"] == {"goal": [0.05, 0.0]}
    env.unwrapped.reset_task({"goal": [-0.9, 0.9]})
    env.reset()
    for step in range(100):
        *_, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        assert truncated == (step == 99) and not terminated
    env.close()


def test_gymnasium_cheetah_rewards_from_x_velocity():
    for env_id, cls, task in [("mamlkit/HalfCheetahVel-v0", HalfCheetahVel, {"velocity": 1.3}),
                              ("mamlkit/HalfCheetahDir-v0", HalfCheetahDir, {"direction": -1})]:
        env = gym.make(env_id)
        assert isinstance(env.unwrapped, cls) and env.spec.max_episode_steps == 200
        obs, _ = env.reset(seed=1, options={"task": task})
        assert obs.shape == (17,)
        rng = np.random.default_rng(0)
        for _ in range(5):
            action = rng.normal(size=6) * 1.5
            _, reward, terminated, _, info = env.step(action)
            clipped = np.clip(action, -1, 1)
            v = info["x_velocity"]
            forward = -abs(v - 1.3) if cls is HalfCheetahVel else -1 * v
            assert reward == pytest.approx(forward - CTRL_COST * np.sum(clipped**2), rel=1e-12)
            assert not terminated and info["task"] == task
        env.close()


def test_cheetah_task_sampling():
    vel = make_batch_env("cheetah-vel")
    tasks = vel.sample_tasks(500, torch.Generator().manual_seed(0))
    v = vel.task_tensor(tasks)
    assert v.shape == (500, 1) and 0 <= v.min() < 0.05 and 1.95 < v.max() <= 2
    assert tasks[:3] == HalfCheetahVel.sample_tasks(3, 0)
    directions = make_batch_env("cheetah-dir").sample_tasks(200, 0)
    assert {t["direction"] for t in directions} == {-1, 1}
    assert 70 < sum(t["direction"] == 1 for t in directions) < 130
    with pytest.raises(ValueError, match="nav2d"):
        make_batch_env("ant-goal")


def gymnasium_copies_of(batch, env_id: str, tasks: list, **make_kwargs) -> list:
    """Four gymnasium envs (2 tasks x 2 trajectories) reset with seeds 0-3, and ``batch`` set
    to their start states; checks that the batch then observes what they observe."""
    singles, qpos, qvel, first = [], [], [], []
    for i in range(4):
        env = gym.make(env_id, **make_kwargs)
        obs, _ = env.reset(seed=i, options={"task": tasks[i // 2]})
        singles.append(env)
        qpos.append(env.unwrapped.data.qpos.copy())
        qvel.append(env.unwrapped.data.qvel.copy())
        first.append(obs)
    obs = batch.set_state(np.stack(qpos).reshape(2, 2, -1), np.stack(qvel).reshape(2, 2, -1))
    assert torch.equal(obs.reshape(4, -1), torch.tensor(np.stack(first), dtype=torch.float32))
    return singles


@pytest.mark.parametrize(("name", "frame_skip"),
                         [("cheetah-vel", 5), ("cheetah-dir", 5), ("cheetah-dir", 1)])
def test_cheetah_batch_equals_gymnasium(name, frame_skip):
    """Same start states and actions: the batch env gives gymnasium's observations and rewards,
    at gymnasium's 5 simulator steps per action and at the paper's code's 1."""
    batch = make_batch_env(name, horizon=40, frame_skip=frame_skip)
    assert batch.dt == pytest.approx(0.01 * frame_skip)
    tasks = batch.sample_tasks(2, 5)
    batch.reset(tasks, 2, torch.Generator().manual_seed(0))
    cls = HalfCheetahVel if name == "cheetah-vel" else HalfCheetahDir
    singles = gymnasium_copies_of(batch, cls.__name__.join(["mamlkit/", "-v0"]), tasks,
                                  frame_skip=frame_skip)
    rng = np.random.default_rng(1)
    for _ in range(40):
        actions = rng.normal(size=(2, 2, 6)) * 1.2
        obs, reward, done = batch.step(torch.tensor(actions))
        for i, env in enumerate(singles):
            o, r, *_ = env.step(actions[i // 2, i % 2])
            assert torch.equal(obs[i // 2, i % 2], torch.tensor(o, dtype=torch.float32))
            assert float(reward[i // 2, i % 2]) == pytest.approx(r, rel=1e-6, abs=1e-6)
        assert not done.any()


def test_cheetah_batch_reset_noise_and_seeding():
    batch = make_batch_env("cheetah-vel")
    tasks = batch.sample_tasks(3, 0)
    a = batch.reset(tasks, 4, torch.Generator().manual_seed(0))
    b = batch.reset(tasks, 4, torch.Generator().manual_seed(0))
    c = batch.reset(tasks, 4, torch.Generator().manual_seed(1))
    assert a.shape == (3, 4, 17) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a[..., :8].abs().max() <= 0.1 + 1e-6  # qpos noise U[-0.1, 0.1] around zero


@pytest.mark.filterwarnings("ignore:.*infinity")
@pytest.mark.parametrize("env_id", ["mamlkit/Navigation2D-v0", "mamlkit/HalfCheetahVel-v0",
                                    "mamlkit/HalfCheetahDir-v0"])
def test_gymnasium_env_checker(env_id):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    tasks = env.unwrapped.sample_tasks(2, seed=0)
    assert tasks == env.unwrapped.sample_tasks(2, seed=0) and len(tasks) == 2
    env.unwrapped.reset_task(tasks[1])
    assert env.unwrapped.task == tasks[1]
    env.close()


def test_nav2d_batch_equals_gymnasium():
    tasks = Navigation2D.sample_tasks(2, 1)
    batch = make_batch_env("nav2d", reward="squared")
    batch.reset(tasks, 1)
    singles = [gym.make("mamlkit/Navigation2D-v0", reward="squared") for _ in tasks]
    for env, task in zip(singles, tasks, strict=True):
        env.reset(options={"task": task})
    actions = torch.randn(30, 2, 1, 2, generator=torch.Generator().manual_seed(0)) * 0.2
    for t in range(30):
        obs, reward, done = batch.step(actions[t])
        for i, env in enumerate(singles):
            o, r, terminated, *_ = env.step(actions[t, i, 0].numpy())
            assert torch.equal(obs[i, 0], torch.from_numpy(o))
            assert float(reward[i, 0]) == pytest.approx(r, abs=1e-7) and terminated == done[i, 0]


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


MAMLKIT_IDS = ["mamlkit/AntDir-v0", "mamlkit/AntVel-v0", "mamlkit/HalfCheetahDir-v0",
               "mamlkit/HalfCheetahVel-v0", "mamlkit/Navigation2D-v0"]


@pytest.mark.slow
@pytest.mark.parametrize("imports", ["import mamlkit, gymnasium", "import gymnasium, mamlkit"])
def test_gymnasium_makes_mamlkits_ids_after_import_mamlkit_in_either_order(imports):
    """Registered on ``import mamlkit`` (whether gymnasium comes first or later), with no
    simulator and no torch loaded until ``make``."""
    pytest.importorskip("mujoco")
    done = _fresh_python(
        f"{imports}\nimport sys\n"
        "print(sorted(m for m in ('mujoco', 'torch') if m in sys.modules))\n"
        "print(sorted(i for i in gymnasium.registry if i.startswith('mamlkit/')))\n"
        "env = gymnasium.make('mamlkit/HalfCheetahVel-v0')\n"
        "env.unwrapped.reset_task(env.unwrapped.sample_tasks(1, seed=0)[0])\n"
        "env.reset(seed=0)\nenv.step(env.action_space.sample())\n"
        "print(env.spec.max_episode_steps, env.unwrapped.task)\n")
    assert done.returncode == 0, done.stderr
    loaded, ids, made = done.stdout.splitlines()
    assert loaded == "[]" and ids == str(MAMLKIT_IDS)
    assert made.startswith("200 {'velocity': ")


def test_import_mamlkit_loads_neither_gymnasium_nor_mujoco_and_needs_neither():
    shown = _fresh_python("import sys\nimport mamlkit\n"
                          "print(sorted(m for m in ('gymnasium', 'mujoco') if m in sys.modules))")
    assert shown.returncode == 0 and shown.stdout.strip() == "[]", shown.stderr
    missing = _fresh_python(  # an install without gymnasium: the usual error, from gymnasium
        "import sys\nsys.modules['gymnasium'] = None\nimport mamlkit\n"
        "try:\n    import gymnasium\nexcept ImportError as e:\n    print(type(e).__name__)\n")
    assert missing.returncode == 0 and missing.stdout.strip() == "ModuleNotFoundError", \
        missing.stderr
