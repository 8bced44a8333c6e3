"""The training loop end to end: reproducibility, exact resume, divergence, run directories."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import mamlkit
from mamlkit.run import checkpoint, loop
from mamlkit.run.config import resolve
from mamlkit.run.loop import RunDirectoryError, TrainingDiverged, train

SMALL = {"iterations": 20, "meta_batch_size": 4, "log_every": 5, "val_every": 10,
         "val_tasks": 8, "checkpoint_every": 5, "shots": 5}


def small_config(**extra):
    return resolve("sinusoid", {**SMALL, **extra})


def weights(run_dir):
    return load_file(checkpoint.latest(run_dir) / "model.safetensors")


def test_same_seed_same_parameters_and_other_seed_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(small_config(seed=seed), tmp_path / name, progress=False)
    a, b, c = (weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("first_order", [False, True])
def test_kill_and_resume_equals_uninterrupted(tmp_path, first_order):
    config = small_config(first_order=first_order)
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "killed", progress=False, stop_after=13)  # last checkpoint: 10
    assert checkpoint.latest(tmp_path / "killed").name == "step_00000010"
    # a checkpoint half-written at the moment of the kill is ignored
    (tmp_path / "killed" / "checkpoints" / ".step_00000015.tmp").mkdir()
    result = train(config, tmp_path / "killed", resume=True, progress=False)
    assert result.iteration == 20
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    iterations = [json.loads(line)["iteration"]
                  for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [5, 10, 15, 20]


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                             monkeypatch):
    run = tmp_path / "run"
    train(small_config(), run, progress=False)
    good = weights(run)
    # continue the finished run with an absurd step size: the loss overflows at once (the
    # learner is built so; a config.yaml edited to say it is refused by its checkpoint's copy)
    build = loop.make_step
    monkeypatch.setattr(loop, "make_step", lambda config, *args: build(
        dataclasses.replace(config, inner_lr=1e30), *args))
    with pytest.raises(TrainingDiverged, match="iteration 21.*step_00000020"):
        train(None, run, resume=True, progress=False, overrides={"iterations": 40})
    after = weights(run)
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_run_directory_errors(tmp_path):
    with pytest.raises(RunDirectoryError, match="Nothing to resume"):
        train(small_config(), tmp_path / "empty", resume=True, progress=False)
    train(small_config(iterations=5), tmp_path / "run", progress=False)
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        train(small_config(), tmp_path / "run", progress=False)


def test_load_and_adapt_in_three_lines(tmp_path):
    train(small_config(), tmp_path / "run", progress=False)
    learner = mamlkit.load(tmp_path / "run")
    x = torch.linspace(-5, 5, 10).unsqueeze(-1)
    params = learner.adapt(x, torch.sin(x))
    prediction = learner(x, params)
    assert prediction.shape == (10, 1)
    assert learner.config.shots == 5 and learner.iteration == 20


def test_metrics_and_run_files(tmp_path):
    run = tmp_path / "run"
    train(small_config(), run, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"iteration", "loss", "seconds"} <= set(records[0])
    assert "val_pre" in records[1] and "val_post" in records[1]
    assert (run / "config.yaml").is_file()
    assert any((run / "tensorboard").iterdir())
    state = json.loads((checkpoint.latest(run) / "state.json").read_text())
    assert state["iteration"] == 20
