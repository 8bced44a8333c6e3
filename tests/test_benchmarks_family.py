"""benchmarks/family.py's table, from hand-made records: intervals across seeds, rows that
explain themselves (diverged, non-finite, not run) and smaller budgets as rows of their own."""

import math

import pytest
from benchmark_scripts import load_benchmark

family = load_benchmark("family")


def test_a_benchmark_that_no_longer_imports_fails_instead_of_skipping(tmp_path):
    """A mamlkit module moved away is a ModuleNotFoundError: importorskip skipped on it."""
    (tmp_path / "moved.py").write_text("from mamlkit.run.comparison import mean_ci95_across\n")
    with pytest.raises(ModuleNotFoundError, match="mamlkit.run.comparison"):
        load_benchmark("moved", tmp_path)
    (tmp_path / "renamed.py").write_text("from mamlkit.run.compare import mean_ci95\n")
    with pytest.raises(ImportError, match="mean_ci95"):
        load_benchmark("renamed", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_benchmark("missing", tmp_path)


def record(variant, seed, after_one, setup="omniglot-5w1s", **extra):
    steps = {"0": {"mean": 0.2, "ci95": 0.01}, "1": {"mean": after_one, "ci95": 0.004}}
    return {"setup": setup, "variant": variant, "seed": seed, "trained_steps": 1,
            "metric": "accuracy", "iterations": 5000, "train_seconds": 600.0,
            "scores": {"steps": steps}, **extra}


def row(lines, name):
    (found,) = [line for line in lines if line.startswith(f"| {name} |")]
    return [c.strip() for c in found.strip("|").split("|")]


def test_three_seeds_give_the_t_interval_and_one_seed_its_task_interval():
    values = [0.95, 0.96, 0.97]
    lines = family.table([record("MAML", s, v) for s, v in enumerate(values)]
                         + [record("ANIL", 0, 0.9)], "omniglot-5w1s")
    std = math.sqrt(sum((v - 0.96) ** 2 for v in values) / 2)
    half = 4.303 * std / math.sqrt(3) * 100  # Student's t, 2 degrees of freedom
    assert row(lines, "MAML")[:4] == ["MAML", "3", "20.0 ± 0.0", f"96.0 ± {half:.1f}"]
    assert row(lines, "ANIL")[3] == "90.0 ± 0.4"  # one seed: the interval over its tasks
    assert row(lines, "MAML")[-1] == "10.0 min"


def test_cells_say_why_they_hold_no_number():
    diverged = [record("MAML", 0, 0.9), {**record("MAML", 1, 0.9), "diverged": "NaN loss"}]
    nan = [record("ANIL", 0, 0.9), record("ANIL", 1, float("nan"))]
    lines = family.table(diverged + nan, "omniglot-5w1s")
    assert row(lines, "MAML")[3] == "training diverged (1 seeds)"
    assert row(lines, "ANIL")[3] == "non-finite in a seed"
    imaml = row(lines, "iMAML")
    assert imaml[1] == "0" and imaml[2].startswith("not run at this budget")
    assert len(imaml) == len(row(lines, "MAML"))  # a full row of the table


def test_a_smaller_budget_is_a_row_and_a_record_of_its_own(tmp_path):
    short = record("iMAML", 0, 0.8, budget_iterations=600, iterations=600)
    lines = family.table([record("MAML", 0, 0.9), short], "omniglot-5w1s")
    assert row(lines, "iMAML (600 it.)")[3] == "80.0 ± 0.4"
    assert row(lines, "iMAML")[2].startswith("not run")  # the full budget is still missing
    assert family.record_path(tmp_path, "omniglot-5w1s", "iMAML", 0, 600) != \
        family.record_path(tmp_path, "omniglot-5w1s", "iMAML", 0)
    full = record("iMAML", 0, 0.85)
    assert not any("not run" in line for line in family.table([full, short], "omniglot-5w1s"))


def test_a_resumed_run_is_timed_for_its_whole_budget():
    resumed = record("MAML", 0, 0.9, resumed_from=4000, train_seconds=120.0)
    assert family.full_train_seconds(resumed) == 600.0
    assert row(family.table([resumed], "omniglot-5w1s"), "MAML")[-1] == "≈ 10.0 min"
