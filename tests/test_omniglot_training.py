"""A short meta-training run on the real Omniglot data (skipped where the data is absent)."""

import os
from pathlib import Path

import pytest

from mamlkit.run import evaluate
from mamlkit.run.config import ConfigError, resolve
from mamlkit.run.load import load
from mamlkit.run.loop import train

ROOT = Path(os.environ.get("MAMLKIT_OMNIGLOT_ROOT",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))
HAVE_DATA = (ROOT / "images_background.zip").is_file() and (
    ROOT / "images_evaluation.zip").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DATA, reason=f"real Omniglot zips not found in {ROOT}")
def test_short_run_adapts_better_than_before(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    config = resolve("omniglot-5w1s", {
        "data_root": str(ROOT), "hidden": [32], "meta_batch_size": 4, "query_shots": 5,
        "iterations": 40, "log_every": 20, "val_every": 40, "val_tasks": 20,
        "checkpoint_every": 40})
    train(config, tmp_path / "run", progress=False)
    result = evaluate.evaluate(load(tmp_path / "run"), num_tasks=100)
    assert result["metric"] == "accuracy"
    before, after = result["steps"]["0"], result["steps"]["1"]
    assert before["mean"] < 0.3  # chance is 0.2: no adaptation, no skill
    assert after["mean"] - after["ci95"] > before["mean"] + before["ci95"] + 0.1


def test_omniglot_without_data_root_says_what_to_do(tmp_path):
    config = resolve("omniglot-5w1s", {"iterations": 1})
    with pytest.raises(ConfigError, match="--data-root"):
        train(config, tmp_path / "run", progress=False)
