"""Meta-RL under torchrun: 2 gloo processes take the same steps as one process, also when each
rank samples in worker processes."""

import os
import pathlib
import socket
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from mamlkit.run import checkpoint, distributed
from mamlkit.run.config import resolve
from mamlkit.run.loop import train
from mamlkit.run.metrics import read_metrics

# 5 tasks split 3 + 2; nav2d episodes end early at the goal, so the ranks' valid steps differ
SMALL = {"iterations": 2, "meta_batch_size": 5, "trajectories": 4, "horizon": 20,
         "policy_hidden": [16], "val_tasks": 2, "val_every": 2, "checkpoint_every": 1}
TRPO = {"cg_iters": 3}  # a TRPO key: refused where the outer step is adam or ppo
SETUPS = {
    "trpo": ("nav2d", TRPO),
    "adam-mixed": ("nav2d-mixed", {"imitation_tasks": 2, "demonstrations": 4}),
    "ppo": ("nav2d", {"outer": "ppo", "first_order": True, "ppo_epochs": 2}),
    # each rank samples its tasks in a spawned worker: the same steps again
    "trpo-workers": ("nav2d", {"sampler_workers": 2, **TRPO}),
}
# one record, at 2: a resume from checkpoint 1 starts inside its window, whose environment
# steps (summed over the ranks) the checkpoint keeps
WINDOW = {**SMALL, **TRPO, "log_every": 2}
WALL_CLOCK = ("seconds", "peak_mem_mb", "env_steps_per_s")


def _config(name):
    preset, extra = SETUPS[name]
    return resolve(preset, {**SMALL, **extra})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.setup(timeout=timedelta(seconds=60))
    with distributed.leave_group_after():
        for name in SETUPS:
            train(_config(name), pathlib.Path(root) / f"two-{name}", progress=False)
        window = resolve("nav2d", WINDOW)
        train(window, pathlib.Path(root) / "two-window", progress=False)
        train(window, pathlib.Path(root) / "two-window-killed", progress=False, stop_after=1)
        train(None, pathlib.Path(root) / "two-window-killed", resume=True, progress=False)


def _weights(run):
    return load_file(checkpoint.latest(run) / "model.safetensors")


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for name in SETUPS:
        train(_config(name), tmp_path / f"one-{name}", progress=False)
        one, two = _weights(tmp_path / f"one-{name}"), _weights(tmp_path / f"two-{name}")
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=0, msg=name)
        records = (tmp_path / f"two-{name}" / "metrics.jsonl").read_text().splitlines()
        assert len(records) == SMALL["iterations"]
    whole, resumed = ([{k: v for k, v in r.items() if k not in WALL_CLOCK}
                       for r in read_metrics(tmp_path / run)]
                      for run in ("two-window", "two-window-killed"))
    assert [r["iteration"] for r in whole] == [2] and resumed == whole
