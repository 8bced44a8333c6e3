"""benchmarks/rl_figure5.py, the paper's RL figure as a table, on hand-made evaluations."""

import json
from pathlib import Path

from benchmark_scripts import load_benchmark

from mamlkit.run.config import resolve
from mamlkit.run.rundir import write_config

rl_figure5 = load_benchmark("rl_figure5")


def _run(folder: Path, per_task: list[list[float]], seconds: list[float], **keys) -> None:
    """A committed run: config.yaml, metrics.jsonl and an eval.json with per-task values."""
    folder.mkdir(parents=True)
    write_config(resolve("cheetah-dir-quick", keys), folder / "config.yaml")
    lines = [json.dumps({"iteration": i + 1, "seconds": s}) for i, s in enumerate(seconds)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    steps = {str(k): {"mean": sum(v) / len(v), "ci95": 0.5} for k, v in enumerate(per_task)}
    random = {"metric": "return", "steps": {k: {"mean": -1.0, "ci95": 0.1} for k in steps}}
    (folder / "eval.json").write_text(json.dumps({
        "metric": "return", "num_tasks": len(per_task[0]), "inner_lr": 0.5,
        "checkpoint": "best (iteration 2)", "iteration": 2, "steps": steps,
        "per_task": {str(k): v for k, v in enumerate(per_task)}, "random_policy": random}))


def test_table_paired_lead_budget_and_missing_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(rl_figure5, "RESULTS", tmp_path)
    _run(tmp_path / "cheetah-dir-quick", [[0.0, 2.0], [10.0, 14.0]], [5.0, 10.0, 4.0, 8.0])
    _run(tmp_path / "cheetah-dir-quick-inner_lr0", [[0.0, 2.0], [1.0, 3.0]], [3.0],
         inner_lr=0.0)
    table = rl_figure5.table()
    assert "| 1.0 ± 0.5 | 12.0 ± 0.5 |" in table  # MAML before / after one step
    assert "| -1.0 ± 0.1 |" in table  # the untrained policy
    assert "- `cheetah-dir-quick`: +10.0 ± 2.0" in table  # 10 - 1 and 14 - 3: mean 10, sd 1.41
    assert "0.3 min" in table  # 10 s, then 8 s after a resume
    assert "| ant, forward/backward (`ant-dir-quick`) | MAML | not run |" in table
    assert "/ 315.65 (Table 5, H = 200) |" in table  # the paper's numbers where it gives them
    assert "(`nav2d-paper`) | pretrained | not run | not run | not run | not run | -40.81 / " \
        "-19.73 / -11.72 / -8.47 (Fig. 4 data) |" in table  # the paper's code's plotted data
    assert "(`cheetah-vel-quick`) | pretrained | not run | not run | not run | not run | " \
        "-158.00 / -135.39 / -128.47 / -133.61 (Fig. 5 data, H = 200) |" in table
    assert "ant-dir 524.80" in table  # the oracle, a line of its own
    assert "?" not in table and "≈" not in table
    assert "- `ant-dir-quick`: not run" in table
    rl_figure5.plot(tmp_path / "figure5.png")
    assert (tmp_path / "figure5.png").stat().st_size > 10_000
