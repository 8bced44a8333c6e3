"""What a person reads: evaluation results, eval file names, run names, progress lines."""

from __future__ import annotations

from pathlib import Path

from mamlkit.run import evaluate


def test_eval_json_is_the_first_evaluation_until_a_full_one_and_then_stays_full(tmp_path):
    """The one rule the README states: a run's first 'eval --tasks 100' is its eval.json (what
    compare reads); one on eval_tasks replaces it; after that another count is eval-N.json."""
    assert evaluate.eval_path(tmp_path, 100, 600) == tmp_path / "eval.json"
    (tmp_path / "eval.json").write_text('{"num_tasks": 100}')
    assert evaluate.eval_path(tmp_path, 50, 600) == tmp_path / "eval.json"
    assert evaluate.eval_path(tmp_path, 600, 600) == tmp_path / "eval.json"
    (tmp_path / "eval.json").write_text('{"num_tasks": 600}')
    assert evaluate.eval_path(tmp_path, 100, 600) == tmp_path / "eval-100.json"
    assert evaluate.eval_path(tmp_path, 600, 600) == tmp_path / "eval.json"
    assert evaluate.eval_path(Path(tmp_path), 100) == tmp_path / "eval.json"  # no config count


def _result(tasks: int = 1500) -> dict:
    per_task = [0.1 * (i % 7) for i in range(tasks)]
    return {"metric": "mse", "num_tasks": tasks, "inner_lr": 0.01, "checkpoint": "best",
            "iteration": 70000,
            "steps": {"0": {"mean": 3.1, "ci95": 0.2}, "1": {"mean": 0.5, "ci95": 0.03}},
            "per_task": {"0": per_task, "1": per_task}}


def test_an_evaluation_prints_as_its_table_and_reads_as_a_dict():
    result = evaluate.Evaluation(_result())
    text = repr(result)
    assert text == str(result) and len(text.splitlines()) < 10
    assert "MSE on 1500 held-out tasks, mean ± 95% CI" in text and "0.5" in text
    assert result["steps"]["1"]["mean"] == 0.5 and len(result["per_task"]["0"]) == 1500
    assert isinstance(result, dict) and dict(result) == _result()


def test_custom_runs_are_evaluated_on_600_tasks_like_every_preset():
    from mamlkit.run import components, custom
    from mamlkit.run import config as config_lib

    assert custom.config().eval_tasks == 600
    supervised = [config_lib.load_preset(name) for name in config_lib.preset_names()]
    supervised = [c for c in supervised if not components.is_rl(c)]
    assert {c.eval_tasks for c in supervised} == {600}  # RL presets: 40 tasks of sampling


def test_run_json_lists_every_session_the_first_included(tmp_path):
    from mamlkit.run import provenance

    first = provenance.record(tmp_path, resume=False, start_iteration=0)
    assert [(s["start_iteration"], s["changed"]) for s in first["sessions"]] == [(0, {})]
    assert first["sessions"][0]["started"] == first["started"]  # the top level: the first
    again = provenance.record(tmp_path, resume=True, start_iteration=5,
                              changes={"iterations": 9})
    assert [(s["start_iteration"], s["changed"]) for s in again["sessions"]] == [
        (0, {}), (5, {"iterations": 9})]
    (tmp_path / provenance.NAME).write_text("{damaged")
    lost = provenance.record(tmp_path, resume=True, start_iteration=7)
    assert [s["start_iteration"] for s in lost["sessions"]] == [7] and "note" in lost


def test_a_default_run_name_is_the_preset_and_a_short_stable_hash_of_the_overrides():
    import re

    from mamlkit.cli import _run_name

    assert _run_name("sinusoid", []) == "sinusoid"
    assert _run_name("configs/my-exp.yml", []) == "my-exp"
    many = ["ways=5", "shots=1", "iterations=60", "threads=1", "channels=1", "val_every=30",
            "image_size=28", "class_split=[0.5, 0.25, 0.25]"]
    name = _run_name("folder-5w1s", many)
    assert re.fullmatch(r"folder-5w1s-[0-9a-f]{8}", name)
    assert _run_name("folder-5w1s", many[::-1]) == name  # the order typed does not matter
    assert _run_name("sinusoid", ["inner_lr=0"]) == _run_name("sinusoid", ["inner_lr=0.0"])
    assert _run_name("sinusoid", ["inner_lr=0"]) != _run_name("sinusoid", ["inner_lr=0.1"])
    assert _run_name("sinusoid", ["seed=1"]) != _run_name("sinusoid-paper", ["seed=1"])


def _fake_run(folder: Path, records: list[dict]) -> Path:
    import json

    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_figures_label_their_bands_keep_mse_above_zero_and_count_iterations(tmp_path):
    from matplotlib.collections import PolyCollection

    from mamlkit.run import plots
    from mamlkit.run.compare import Group

    # a validation MSE whose interval is wider than its mean: the band would dip below zero
    records = [{"iteration": i, "loss": 1.0 / i, "train_post": 0.2, "val_pre": 2.0,
                "val_pre_ci95": 0.5, "val_post": 0.1, "val_post_ci95": 0.3}
               for i in range(1, 6)]
    run = Group("a", {"a": _fake_run(tmp_path / "a", records)})
    fig = plots.learning_curve_figure([run], "mse")
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any("95%" in text for text in legend), legend
    bands = [c for c in fig.axes[1].collections if isinstance(c, PolyCollection)]
    assert bands and all(path.vertices[:, 1].min() >= 0 for band in bands
                         for path in band.get_paths())
    fig.canvas.draw()
    for ax in fig.axes:  # 5 iterations: whole-number ticks only
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    rl = [{"iteration": i, "pre_return": -5.0, "post_return": -4.0, "std": 0.9,
           "val_pre": -5.0, "val_pre_ci95": 9.0, "val_post": -3.0, "val_post_ci95": 9.0}
          for i in range(1, 6)]
    fig = plots.rl_figure([Group("r", {"r": _fake_run(tmp_path / "r", rl)})])
    bands = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert min(p.vertices[:, 1].min() for b in bands for p in b.get_paths()) < 0  # returns


SMALL = {"iterations": 8, "log_every": 2, "val_every": 4, "checkpoint_every": 4,
         "meta_batch_size": 2, "val_tasks": 3, "hidden": [8]}


def test_training_without_a_bar_prints_progress_and_every_validation(tmp_path, capsys,
                                                                     monkeypatch):
    import re

    from mamlkit.run import console
    from mamlkit.run.config import resolve
    from mamlkit.run.loop import train

    monkeypatch.setattr(console, "INTERVAL", 0.0)  # a line at every iteration
    train(resolve("sinusoid", SMALL), tmp_path / "run", progress=False)
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if re.match(r"iteration \d+/8 \(\d+%\), [\d.e+]+ it/s",
                                                   line)]
    assert len(progress) == 8 and progress[-1].startswith("iteration 8/8 (100%)")
    assert "loss" in progress[-1]
    validations = [line for line in lines if "validation" in line]
    assert [v.split(":")[0] for v in validations] == ["iteration 4/8", "iteration 8/8"]
    assert re.search(r"before adaptation [\d.e+-]+ ± [\d.e+-]+, adapted [\d.e+-]+ ± ",
                     validations[0])
    assert validations[0].endswith("(mean ± 95% CI over 3 held-out tasks)")


def test_training_with_a_bar_prints_each_validation_above_it(tmp_path, capsys):
    from mamlkit.run.config import resolve
    from mamlkit.run.loop import train

    train(resolve("sinusoid", SMALL), tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert err.count("validation before adaptation") == 2
    assert not any(line.startswith("iteration 2/8 (") for line in err.splitlines())


def test_rl_progress_shows_environment_steps_per_second():
    from mamlkit.run.steps import RLStep

    shown = RLStep.postfix(None, {"pre_return": -3.0, "post_return": -2.0,
                                  "env_steps_per_s": 8123.4})
    assert shown["env steps/s"] == "8123"
