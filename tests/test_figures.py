"""Figures, tables and evaluation provenance as a researcher meets them: eval.json says which
weights it measured, a quick eval never replaces the full one, a read-only run still prints its
table, seeds of one experiment become one curve and one table row, every axis names its metric,
and RL runs log their environment steps."""

import csv
import io
import json
import os
import shutil

import pytest

from mamlkit.cli import main
from mamlkit.run import compare, plots
from mamlkit.run.config import ConfigError
from mamlkit.run.load import load
from mamlkit.run.metrics import read_metrics

TINY = ["--no-progress", "--set", "iterations=20", "--set", "log_every=5", "--set",
        "val_every=10", "--set", "meta_batch_size=4", "--set", "val_tasks=5", "--set",
        "eval_tasks=20"]
NAV = ["--no-progress", "--set", "meta_batch_size=3", "--set", "trajectories=4", "--set",
       "horizon=20", "--set", "policy_hidden=[16]", "--set", "val_tasks=3", "--set",
       "val_every=2", "--set", "checkpoint_every=2", "--set", "cg_iters=3", "--set",
       "eval_tasks=3"]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Three tiny sinusoid runs that differ only in their seed, evaluated on 20 tasks."""
    root = tmp_path_factory.mktemp("runs")
    runs = [root / f"a-seed{s}" for s in range(3)]
    for s, run in enumerate(runs):
        assert main(["train", "sinusoid", "--out", str(run), *TINY, "--set", f"seed={s}"]) == 0
    assert main(["eval", *map(str, runs), "--no-progress"]) == 0
    return runs


def _other_experiment(run, tmp_path, name="b"):
    """A copy of ``run`` whose config differs in more than the seed (another experiment)."""
    other = tmp_path / name
    shutil.copytree(run, other)
    config = other / "config.yaml"
    config.write_text(config.read_text().replace("inner_lr: 0.01", "inner_lr: 0.02"))
    return other


def test_eval_records_its_checkpoint_and_a_quick_eval_keeps_the_full_one(seeds, capsys):
    full = json.loads((seeds[0] / "eval.json").read_text())
    assert full["num_tasks"] == 20 and full["iteration"] == 20
    assert full["checkpoint"] == "latest (step_00000020)"
    capsys.readouterr()
    assert main(["eval", str(seeds[0]), "--tasks", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.index("held-out tasks") < out.index("wrote") and "eval-5.json" in out
    quick = json.loads((seeds[0] / "eval-5.json").read_text())
    assert quick["num_tasks"] == 5 and quick["iteration"] == 20
    assert json.loads((seeds[0] / "eval.json").read_text()) == full


def _assert_table_then_one_sentence(capsys, run):
    captured = capsys.readouterr()
    assert "MSE on 20 held-out tasks" in captured.out and "±" in captured.out
    assert "wrote" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "could not write the evaluation into" in lines[0]
    assert str(run) in lines[0] and "Traceback" not in captured.err


def test_eval_into_a_read_only_run_prints_the_table_then_one_sentence(seeds, tmp_path, capsys):
    run = tmp_path / "read-only"
    shutil.copytree(seeds[1], run)
    (run / "eval.json").unlink()
    run.chmod(0o555)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("running as root: chmod does not make the directory read-only")
        capsys.readouterr()
        assert main(["eval", str(run), "--no-progress"]) == 2
        _assert_table_then_one_sentence(capsys, run)
        assert not (run / "eval.json").exists()
    finally:
        run.chmod(0o755)


def test_a_failed_write_prints_the_table_then_one_sentence(seeds, tmp_path, capsys,
                                                           monkeypatch):
    """The same path as a read-only directory, where chmod cannot make one (root)."""
    from mamlkit.run import evaluate

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(evaluate, "write", refuse)
    capsys.readouterr()
    assert main(["eval", str(seeds[1]), "--no-progress"]) == 2
    _assert_table_then_one_sentence(capsys, seeds[1])


def test_plot_of_a_missing_run_creates_nothing(tmp_path, capsys):
    missing, out = tmp_path / "runs" / "nope", tmp_path / "figures"
    assert main(["plot", str(missing), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not out.exists() and not missing.exists()
    assert main(["plot", str(missing)]) == 2 and not missing.exists()


def test_seeds_become_one_curve_with_a_band_and_figures_are_png_and_pdf(seeds, tmp_path,
                                                                       capsys):
    # trained, not a copy with an edited config.yaml: plot loads its weights, and a config that
    # differs from the one its checkpoint was trained with is refused
    other = tmp_path / "b"
    assert main(["train", "sinusoid", "--out", str(other), *TINY, "--set", "inner_lr=0.02"]) == 0
    runs = compare.unique_names([*seeds, other])
    groups = compare.group_by_seed(runs)
    assert [g.label for g in groups] == ["a (3 seeds)", "b"]
    x, y, ci = plots.group_series(groups[0], "val_post")
    per_seed = [{r["iteration"]: r["val_post"] for r in read_metrics(s) if "val_post" in r}
                for s in seeds]
    assert x == [10, 20]
    assert y == pytest.approx([sum(p[i] for p in per_seed) / 3 for i in x])
    assert all(c > 0 for c in ci)
    figure = plots.learning_curve_figure(groups, "mse")
    legend = [t.get_text() for leg in figure.legends for t in leg.get_texts()]
    assert "a (3 seeds)" in legend and "b" in legend
    out = tmp_path / "figures"
    assert main(["plot", *map(str, [*seeds, other]), "--out", str(out)]) == 0
    for name in ("learning_curve", "adaptation"):
        assert (out / f"{name}.png").stat().st_size > 10_000
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_every_axis_names_its_metric_with_plain_ticks_and_marked_validation(seeds):
    group = compare.group_by_seed({"a": seeds[0]})
    for metric, label in (("mse", "query MSE"), ("accuracy", "query accuracy (%)")):
        fig = plots.learning_curve_figure(group, metric)
        loss, val = fig.axes
        assert loss.get_ylabel() == f"meta-training query loss ({plots.LOSS_NAMES[metric]})"
        assert val.get_ylabel() == label and loss.get_xlabel() == val.get_xlabel() == "iteration"
        assert {"o", "v"} <= {line.get_marker() for line in val.get_lines()}
        assert val.collections  # the validation CI bands
    assert [ax.get_ylabel() for ax in plots.rl_figure(group).axes][0] == "average return"
    fig = plots.sinusoid_figure({"a": load(seeds[0])})
    assert all(ax.get_ylabel() == "y" and ax.get_title().startswith("(") for ax in fig.axes)
    assert all(ax.get_xlabel() == "x" for ax in fig.axes)
    ax = fig.axes[0]
    ax.set_ylim(0.03, 30)
    plots.plain_log_axis(ax)
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and not any("times" in t or "×" in t or "^" in t for t in ticks)
    records = read_metrics(seeds[0])
    assert {"val_pre_ci95", "val_post_ci95"} <= set(records[-1])


def test_compare_groups_seeds_in_md_csv_and_latex(seeds, tmp_path, capsys):
    other = _other_experiment(seeds[0], tmp_path)
    runs = [*map(str, seeds), str(other)]
    capsys.readouterr()
    assert main(["compare", *runs, "--steps", "0,1"]) == 0
    md = capsys.readouterr().out
    assert "| run | tasks | iteration | 0 steps | 1 step |" in md and "10 steps" not in md
    assert "| a (3 seeds) | 20 | 20 |" in md and "| b | 20 | 20 |" in md
    assert main(["compare", *runs, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    means = [json.loads((s / "eval.json").read_text())["steps"]["1"]["mean"] for s in seeds]
    assert rows[0]["run"] == "a (3 seeds)" and rows[0]["seeds"] == "3"
    assert float(rows[0]["step_1_mean"]) == pytest.approx(sum(means) / 3, rel=1e-5)
    assert float(rows[0]["step_1_ci95"]) > 0 and rows[1]["seeds"] == "1"
    assert main(["compare", *runs, "--format", "latex", "--steps", "1"]) == 0
    tex = capsys.readouterr().out
    assert r"\begin{tabular}{lrrr}" in tex and r"\pm" in tex and r"\bottomrule" in tex


def test_compare_refuses_mixed_metrics_and_unevaluated_runs(seeds, tmp_path, capsys):
    other = _other_experiment(seeds[0], tmp_path, "acc")
    result = json.loads((other / "eval.json").read_text())
    (other / "eval.json").write_text(json.dumps({**result, "metric": "accuracy"}))
    unevaluated = _other_experiment(seeds[0], tmp_path, "fresh")
    (unevaluated / "eval.json").unlink()
    capsys.readouterr()
    for runs, message in (([seeds[0], other], "report different metrics (accuracy, mse)"),
                          ([seeds[0], unevaluated], f"run 'mamlkit eval {unevaluated}' first")):
        assert main(["compare", *map(str, runs)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


def test_rl_runs_log_environment_steps_and_validation_intervals(tmp_path, capsys):
    run = tmp_path / "nav"
    assert main(["train", "nav2d", "--out", str(run), "--set", "iterations=2", *NAV]) == 0
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("iterations: 2", "iterations: 3"))
    assert main(["train", "nav2d", "--out", str(run), "--resume", "--no-progress"]) == 0
    records = read_metrics(run)
    steps = [r["env_steps"] for r in records]
    # at most 3 tasks x 4 trajectories x 20 steps, support and query, per iteration
    assert all(0 < b - a <= 3 * 4 * 20 * 2 for a, b in zip([0, *steps], steps, strict=False))
    assert all(r["env_steps_per_s"] > 0 for r in records)
    assert {"val_pre_ci95", "val_post_ci95"} <= set(records[1])
    group = compare.group_by_seed({"nav": run})
    assert plots.rl_figure(group).axes[0].get_ylabel() == "average return"
    assert main(["plot", str(run)]) == 0
    assert (run / "trajectories.pdf").read_bytes().startswith(b"%PDF")


def test_plot_with_a_baseline_draws_it_beside_the_run_on_the_same_tasks(seeds, tmp_path,
                                                                         monkeypatch):
    """Finn et al. Fig. 2: each held-out task a row, the run and the alpha = 0 baseline side by
    side on the same support points; the baseline is fine-tuned with the preset's alpha."""
    pretrained = tmp_path / "pretrained"
    assert main(["train", "sinusoid", "--out", str(pretrained), *TINY, "--set",
                 "inner_lr=0"]) == 0
    out, curves = tmp_path / "figures", []
    draw = plots.learning_curve_figure

    def recorded(groups, metric):
        curves.append([g.label for g in groups])
        return draw(groups, metric)

    monkeypatch.setattr(plots, "learning_curve_figure", recorded)
    assert main(["plot", str(seeds[0]), "--baseline", str(pretrained), "--out", str(out)]) == 0
    assert (out / "adaptation.png").stat().st_size > 10_000
    assert curves == [["a-seed0", "pretrained (α = 0)"]]  # its learning curve joins the run's
    run, baseline = load(seeds[0]), load(pretrained)
    fig = plots.sinusoid_figure({"MAML": run, "pretrained (α = 0)": baseline}, num_tasks=2,
                                by_task=True)
    axes = [fig.axes[:2], fig.axes[2:]]  # rows: tasks; columns: MAML, pretrained
    for row in axes:
        left, right = ([line for line in ax.get_lines() if line.get_marker() == "^"][0]
                       for ax in row)
        assert (left.get_ydata() == right.get_ydata()).all()  # the same support points
        assert "MAML" in row[0].get_title() and "pretrained" in row[1].get_title()
        assert row[0].get_shared_y_axes().joined(row[0], row[1])
        pre, one = (line.get_ydata() for line in row[1].get_lines()[1:3])
        assert abs(pre - one).max() > 0  # the baseline was fine-tuned (alpha 0.01, not 0)


def test_a_baseline_that_is_not_a_sinusoid_run_is_one_sentence(seeds):
    from types import SimpleNamespace

    nav = SimpleNamespace(config=SimpleNamespace(task="nav2d"))
    with pytest.raises(ConfigError, match="--baseline draws a sinusoid run beside sinusoid"):
        plots._check_baseline({"a": load(seeds[0])}, nav, "runs/nav")
