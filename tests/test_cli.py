"""The command line as a user meets it: presets, train, eval, plot, and one-sentence errors."""

import json

import pytest

from mamlkit.cli import main
from mamlkit.run.config import ConfigError, from_dict, parse_overrides, resolve

FAST = ["--set", "iterations=30", "--set", "meta_batch_size=4", "--set", "log_every=10",
        "--set", "val_every=10", "--set", "val_tasks=8", "--set", "checkpoint_every=10"]


def test_presets_lists_each_with_a_line(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert {"sinusoid", "sinusoid-paper"} <= set(names)
    assert all(len(line.split()) > 2 for line in lines)


def test_train_eval_plot_end_to_end(tmp_path, capsys):
    maml, base = tmp_path / "maml", tmp_path / "base"
    assert main(["train", "sinusoid", "--out", str(maml), "--no-progress", *FAST]) == 0
    assert main(["train", "sinusoid", "--out", str(base), "--no-progress", *FAST,
                 "--set", "inner_lr=0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(maml), str(base), "--tasks", "150"]) == 0
    table = capsys.readouterr().out
    assert "maml" in table and "base" in table and "±" in table
    result = json.loads((maml / "eval.json").read_text())
    assert result["metric"] == "mse" and result["num_tasks"] == 150
    assert set(result["steps"]) == {"0", "1", "2", "5", "10"}
    assert all(set(v) == {"mean", "ci95"} for v in result["steps"].values())
    # the alpha=0 baseline is fine-tuned with the preset's alpha at evaluation
    other = json.loads((base / "eval.json").read_text())
    assert other["inner_lr"] == 0.01
    # per-task values, the same tasks in the same order: a paired difference
    for step, values in result["per_task"].items():
        assert len(values) == 150
        assert abs(sum(values) / 150 - result["steps"][step]["mean"]) < 1e-5
    differences = [a - b for a, b in zip(result["per_task"]["1"], other["per_task"]["1"],
                                         strict=True)]
    mean = sum(differences) / 150
    sd = (sum((d - mean) ** 2 for d in differences) / 149) ** 0.5
    assert main(["compare", "--paired", str(maml), str(base)]) == 0
    paired = capsys.readouterr().out
    assert f"| 1 | {mean:+.2f} ± {1.96 * sd / 150 ** 0.5:.2f} |" in paired
    assert main(["compare", "--paired", str(maml)]) == 2
    assert "exactly two runs" in capsys.readouterr().err
    assert main(["plot", str(maml), str(base)]) == 0
    assert (maml / "learning_curve.png").stat().st_size > 10_000
    assert (maml / "adaptation.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv,message", [
    (["train", "nope"], "Unknown preset 'nope'"),
    (["train", "sinusoid", "--set", "inner_rl=0.1"], "Unknown config key 'inner_rl'; valid keys"),
    (["train", "sinusoid", "--set", "inner_lr=fast"], "'inner_lr' needs a value of type float"),
    (["train", "sinusoid", "--set", "first_order=3"], "'first_order' needs a value of type bool"),
    (["train", "sinusoid", "--set", "batching=magic"], "'batching' must be one of"),
    (["train", "sinusoid", "--set", "noequals"], "key=value"),
])
def test_bad_input_gives_one_sentence(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_of_a_non_run_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_overrides_are_typed():
    assert parse_overrides(["inner_lr=0", "hidden=[64, 64]", "first_order=true"]) == {
        "inner_lr": 0, "hidden": [64, 64], "first_order": True}
    config = resolve("sinusoid", {"inner_lr": 0})
    assert config.inner_lr == 0.0 and isinstance(config.inner_lr, float)
    with pytest.raises(ConfigError):
        from_dict({"hidden": [1.5]})
    # YAML 1.1 reads "1e-6" as a string; float keys still take it
    assert resolve("sinusoid", parse_overrides(["meta_lr=1e-4"])).meta_lr == 1e-4
    with pytest.raises(ConfigError):
        from_dict({"meta_lr": "fast"})


def test_paired_needs_evaluations_alike_with_per_task_values(tmp_path):
    from mamlkit.run.errors import RunDirectoryError
    from mamlkit.run.paired import paired_difference

    old = {"metric": "mse", "num_tasks": 2, "steps": {"0": {"mean": 1.0, "ci95": 0.1}}}
    new = {**old, "per_task": {"0": [1.0, 3.0]}}
    for name, result in {"old": old, "new": new, "other": {**new, "num_tasks": 3},
                         "same": {**new, "per_task": {"0": [0.0, 1.0]}}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(result))
    with pytest.raises(RunDirectoryError, match="no per-task values"):
        paired_difference(tmp_path / "new", tmp_path / "old")
    with pytest.raises(RunDirectoryError, match="not evaluated alike"):
        paired_difference(tmp_path / "new", tmp_path / "other")
    assert paired_difference(tmp_path / "new", tmp_path / "same")["steps"]["0"] == {
        "mean": 1.5, "ci95": pytest.approx(1.96 * 0.5 ** 0.5 / 2 ** 0.5)}
