"""Meta-batches split over processes: 2 gloo processes on loopback against one process."""

import json
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
from mamlkit.run.loop import RunDirectoryError, train
from mamlkit.run.scale import meta_step_backward

# 5 tasks over 2 ranks: slices of 3 and 2, so the weighting of the average matters
SMALL = {"iterations": 6, "meta_batch_size": 5, "log_every": 2, "val_every": 3, "val_tasks": 4,
         "checkpoint_every": 2, "shots": 5}


def small_config():
    return resolve("sinusoid", SMALL)


def weights(run_dir):
    return load_file(checkpoint.latest(run_dir) / "model.safetensors")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forbid_writes(rank: int) -> None:
    """On ranks other than 0, any file write of the training loop fails the test."""
    import mamlkit.run.config
    import mamlkit.run.events
    import mamlkit.run.loop

    def refuse(*args, **kwargs):
        raise AssertionError(f"rank {rank} tried to write a file: {args[:2]}")

    original_open = pathlib.Path.open

    def guarded_open(self, mode="r", *args, **kwargs):
        # /proc/self/clear_refs resets the peak-memory counter; it is no file of the run
        if any(c in mode for c in "wax+") and not str(self).startswith("/proc/"):
            refuse(self, mode)
        return original_open(self, mode, *args, **kwargs)

    checkpoint.save = refuse
    mamlkit.run.config.save = refuse
    mamlkit.run.loop.trim_metrics = refuse
    mamlkit.run.events.EventLog.rebuild = refuse
    pathlib.Path.open = guarded_open
    pathlib.Path.mkdir = refuse


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """One rank, as torchrun would start it: env variables, then the ordinary train()."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    root = pathlib.Path(root)
    os.chdir(root / f"cwd{rank}")  # stray relative writes would land here
    distributed.setup(timeout=timedelta(seconds=60))
    if rank != 0:
        _forbid_writes(rank)
    config = small_config()
    with distributed.leave_group_after():
        train(config, root / "whole", progress=False)
        train(config, root / "killed", progress=False, stop_after=5)  # last checkpoint: 4
        train(config, root / "killed", resume=True, progress=False)
        with pytest.raises(RunDirectoryError, match="already holds a run"):
            train(config, root / "whole", progress=False)  # every rank stops, none hangs
        # the pure pieces: shards and the weighted all-reduce of a toy gradient
        assert distributed.current() == distributed.Context(rank, world, rank)
        p = torch.nn.Parameter(torch.zeros(3))
        p.grad = torch.full((3,), float(rank + 1))
        mean = distributed.average_gradients([p], float(rank + 1), 3 - rank, 5)
        assert mean == pytest.approx((1 * 3 + 2 * 2) / 5)
        assert torch.allclose(p.grad, torch.full((3,), 7 / 5))
        assert distributed.agree(rank == 1) and not distributed.agree(False)  # stop together
        assert distributed.broadcast_object({"from": rank}) == {"from": 0}


@pytest.mark.slow
def test_two_processes_equal_one_write_from_rank_0_only_and_resume(tmp_path):
    for rank in range(2):
        (tmp_path / f"cwd{rank}").mkdir()
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    train(small_config(), tmp_path / "single", progress=False)

    single, whole, resumed = (weights(tmp_path / n) for n in ("single", "whole", "killed"))
    assert max((single[k] - whole[k]).abs().max().item() for k in single) < 1e-6
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # the same files as one process: one TensorBoard file, no duplicate metric records
    def files(run):
        return sorted(str(p.relative_to(run)) for p in run.rglob("*")
                      if "tensorboard" not in p.parts)
    assert files(tmp_path / "whole") == files(tmp_path / "single")
    assert len(list((tmp_path / "whole" / "tensorboard").iterdir())) == 1
    records = {n: [json.loads(line) for line in (tmp_path / n / "metrics.jsonl").open()]
               for n in ("single", "whole", "killed")}
    assert [r["iteration"] for r in records["whole"]] == [2, 3, 4, 6]
    assert [r["iteration"] for r in records["killed"]] == [2, 3, 4, 6]
    for one, two in zip(records["single"], records["whole"], strict=True):
        assert set(one) == set(two)
        for key in ("loss", "train_post", "val_post"):
            if key in one:
                assert two[key] == pytest.approx(one[key], rel=1e-5)
    assert "peak_mem_mb" in records["whole"][0] and records["whole"][0]["peak_mem_mb"] > 0
    assert not any((tmp_path / "cwd0").iterdir()) and not any((tmp_path / "cwd1").iterdir())


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("total", [1, 5, 6, 16])
def test_shards_cover_the_meta_batch_once_in_order(world, total):
    slices = [distributed.shard(total, distributed.Context(r, world, r)) for r in range(world)]
    covered = [i for s in slices for i in range(total)[s]]
    assert covered == list(range(total))
    sizes = [len(range(total)[s]) for s in slices]
    assert max(sizes) - min(sizes) <= 1


def test_one_process_without_torchrun_variables_is_a_world_of_one(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    context = distributed.setup()
    assert context == distributed.Context() and not context.distributed and context.is_main
    assert not torch.distributed.is_initialized()
    assert distributed.shard(5) == slice(0, 5)
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda")
    # the meta-step is exactly loss.backward()
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    value = meta_step_backward(lambda batch: (p ** 2).sum(), None, [p])
    assert value == 5.0 and torch.equal(p.grad, torch.tensor([2.0, 4.0]))
