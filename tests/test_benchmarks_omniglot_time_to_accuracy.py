"""benchmarks/omniglot_time_to_accuracy.py and run.metrics.elapsed_seconds, on hand-made runs."""

import json

from benchmark_scripts import load_benchmark

from mamlkit.run.metrics import elapsed_seconds

time_to_accuracy = load_benchmark("omniglot_time_to_accuracy")


def test_elapsed_seconds_adds_up_the_processes_of_a_resumed_run():
    seconds = [10.0, 20.0, 5.0, 15.0, 3.0]  # resumed twice
    records = [{"iteration": i, "seconds": s} for i, s in enumerate(seconds)]
    assert elapsed_seconds(records) == [10.0, 20.0, 25.0, 35.0, 38.0]
    assert elapsed_seconds([]) == []


def test_table_and_figure_from_a_resumed_run(tmp_path, monkeypatch):
    monkeypatch.setattr(time_to_accuracy, "RESULTS", tmp_path)
    run = tmp_path / "paper" / "omniglot-5w1s"
    run.mkdir(parents=True)
    records = [(500, 1800.0, 0.90), (1000, 3600.0, 0.96), (1500, 1800.0, 0.971),
               (2000, 3600.0, 0.975)]  # a resume before 1,500: 2 h at 2,000
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"iteration": i, "seconds": s, "loss": 0.1, "val_post": v,
                    "val_post_ci95": 0.01}) + "\n" for i, s, v in records))
    step_cost = {"omniglot-5w1s": {"cpu": "test CPU", "cores": 2, "rates": [
        {"threads": 1, "seconds_per_iteration": 2.4, "load_average_before": 0.1},
        {"threads": 2, "seconds_per_iteration": 1.2, "load_average_before": 0.1}]}}
    table = time_to_accuracy.table(step_cost)
    assert "| `omniglot-5w1s` | 95% | 1,000 | 1.00 | 0.33 | 0.67 |" in table
    assert "| `omniglot-5w1s` | 97% | 1,500 | 1.50 | 0.50 | 1.00 |" in table
    assert "| `omniglot-5w1s` | 98% | not yet (best 97.50% at 2,000) |" in table
    assert "| `omniglot-5w5s` | not run |" in table
    peer = tmp_path / "learn2learn-example-5w1s"
    peer.mkdir()
    (peer / "metrics.jsonl").write_text("".join(
        json.dumps({"iteration": i, "seconds": 2 * c, "cpu_seconds": c, "val_post": v,
                    "val_post_ci95": 0.02}) + "\n"
        for i, c, v in [(500, 1800.0, 0.70), (1000, 3600.0, 0.80), (1500, 5400.0, 0.85)]))
    (line,) = time_to_accuracy.peer_lines(step_cost)  # no quiet rate: the peer's CPU time
    assert line.startswith("- learn2learn example (5w1s): 85.0 ± 2.0% after 1,500 iterations, "
                           "1.50 core-hours; 80.0 ± 2.0% at iteration 1,000, 1.00 core-hours, "
                           "where mamlkit's `omniglot-5w1s` reached 97% (1.00 core-hours);")
    # with its quiet rate measured (1.2 s/it), iterations x rate is the yardstick on both sides:
    # 1.00 core-hours buy it 3,000 iterations, more than it ran
    step_cost["learn2learn-example-5w1s"] = {"cpu": "test CPU", "cores": 2, "rates": [
        {"threads": 1, "seconds_per_iteration": 1.2, "load_average_before": 0.1}]}
    (line,) = time_to_accuracy.peer_lines(step_cost)
    assert line.startswith("- learn2learn example (5w1s): 85.0 ± 2.0% after 1,500 iterations, "
                           "0.50 core-hours at its quiet 1.200 s/it (1.50 CPU hours as it ran); "
                           "85.0 ± 2.0% at iteration 1,500, 0.50 core-hours, where mamlkit's "
                           "`omniglot-5w1s` reached 97% (1.00 core-hours) (the peer's run has not "
                           "spent that budget yet); mamlkit's `omniglot-5w1s` within the same "
                           "core-hours (iteration 500 of the 750 they buy): 90.0 ± 1.0%")
    time_to_accuracy.plot(step_cost, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000


def test_the_step_cost_is_the_second_logging_window(monkeypatch):
    """A metrics record costs about a meta-step (the adaptation curve on the training batch):
    the rate comes from a window that holds one record, as the runs log, not one per step."""
    commands = []
    monkeypatch.setattr(time_to_accuracy.subprocess, "run",
                        lambda command, **kwargs: commands.append(command))
    monkeypatch.setattr(time_to_accuracy, "read_metrics", lambda out: [
        {"iteration": 50, "seconds": 130.0}, {"iteration": 100, "seconds": 230.0}])
    rate = time_to_accuracy.measure_step_cost("omniglot-5w5s", "DATA", 2, 50)
    assert rate["seconds_per_iteration"] == 2.0 and rate["iterations"] == 50
    (command,) = commands
    for setting in ("iterations=100", "log_every=50", "threads=2"):
        assert setting in command
