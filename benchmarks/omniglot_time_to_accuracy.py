"""Time to accuracy of the Omniglot paper presets: a table and a figure from the committed runs.

    python benchmarks/omniglot_time_to_accuracy.py --measure --data-root DIR   # step cost, quiet
    python benchmarks/omniglot_time_to_accuracy.py                            # table and figure

A paper-size run is stopped and resumed many times on a shared machine, so its recorded wall
time mixes loads (one iteration took 1.1 s on a quiet machine and 6.8 s beside three other jobs).
The table gives both: the recorded wall time, summed over every process of the run, and the cost
the same iterations have on a quiet machine, from ``--measure`` (a short run of the preset at one
and at two threads, logging as the runs do; ``step_cost.json`` keeps the CPU, the load average
and the rates). Core-hours
are iterations x the one-thread seconds per iteration. Runs of another library written in the
same record format (``iteration``, ``seconds``, ``val_post``) are plotted on the wall-time axis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mamlkit.run.metrics import elapsed_seconds, read_metrics

RESULTS = Path(__file__).resolve().parent / "results" / "omniglot"
RUNS = {"omniglot-5w1s": "paper/omniglot-5w1s", "omniglot-5w5s": "paper/omniglot-5w5s"}
PEERS = {"learn2learn example (5w1s)": "learn2learn-example-5w1s"}
THRESHOLDS = {"omniglot-5w1s": (0.95, 0.97, 0.98),  # the rows; 5w5s up to its target
              "omniglot-5w5s": (0.97, 0.98, 0.99, 0.995)}
PAPER = {"omniglot-5w1s": 0.987, "omniglot-5w5s": 0.999}  # Finn et al. 2017, Table 1


def validation_curve(run_dir: Path) -> list[dict[str, float]]:
    """``iteration``, recorded wall ``hours`` and ``val_post`` of each validation of a run."""
    records = read_metrics(run_dir)
    return [{"iteration": r["iteration"], "hours": seconds / 3600, "val_post": r["val_post"],
             "val_post_ci95": r.get("val_post_ci95", 0.0),
             "cpu_hours": r["cpu_seconds"] / 3600 if "cpu_seconds" in r else None}
            for r, seconds in zip(records, elapsed_seconds(records), strict=True)
            if "val_post" in r]


def peer_core_hours(point: dict[str, Any], seconds_per_iteration: float | None) -> float | None:
    """A peer's core-hours at a validation: its iterations at its quiet one-thread rate when
    measured (``step_cost.json``, the same yardstick as mamlkit's rows), else its CPU time."""
    if seconds_per_iteration:
        return point["iteration"] * seconds_per_iteration / 3600
    return point["cpu_hours"]


def accuracy_at(curve: list[dict[str, Any]], core_hours: float,
                seconds_per_iteration: float | None = None) -> dict[str, Any] | None:
    """A peer's last validation within ``core_hours`` (None: none yet)."""
    within = [p for p in curve if (hours := peer_core_hours(p, seconds_per_iteration))
              is not None and hours <= core_hours]
    return within[-1] if within else None


def first_reaching(curve: list[dict[str, float]], threshold: float) -> dict[str, float] | None:
    """The first validation at or above ``threshold`` (None: not reached yet)."""
    return next((point for point in curve if point["val_post"] >= threshold), None)


def measure_step_cost(preset: str, data_root: str, threads: int, window: int) -> dict:
    """Seconds per iteration of ``preset`` at ``threads``, from a fresh run of two logging
    windows of ``window`` iterations: the second window's time over its iterations. A window
    holds one metrics record, whose adaptation curve on the training batch costs about a
    meta-step; the presets log every 50 iterations, so a window of 50 pays it as the runs do
    (one record per iteration, as this measured before, added ~1.3 s to every 5w5s
    iteration). The first window holds the warm-up."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "mamlkit", "train", preset, "--data-root", data_root,
                   "--out", out, "--no-progress", "--set", f"iterations={2 * window}",
                   "--set", f"log_every={window}", "--set", f"val_every={window * 10}",
                   "--set", f"checkpoint_every={window * 10}", "--set", f"threads={threads}",
                   "--set", "loggers=[jsonl]"]
        load_before = os.getloadavg()[0]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        records = read_metrics(out)
    first, last = records[-2], records[-1]
    per_iteration = (last["seconds"] - first["seconds"]) / (last["iteration"] - first["iteration"])
    return {"threads": threads, "iterations": last["iteration"] - first["iteration"],
            "log_every": window, "seconds_per_iteration": round(per_iteration, 4),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_step_cost() -> dict[str, Any]:
    path = RESULTS / "step_cost.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _cost(step_cost: dict[str, Any], preset: str, threads: int) -> float | None:
    for entry in step_cost.get(preset, {}).get("rates", []):
        if entry["threads"] == threads:
            return entry["seconds_per_iteration"]
    return None


def table(step_cost: dict[str, Any]) -> str:
    lines = ["| preset | accuracy | iteration | recorded wall time (h) | quiet 2-core wall time "
             "(h) | core-hours (1 thread) |", "|---|---|---|---|---|---|"]
    for preset, folder in RUNS.items():
        if not (RESULTS / folder / "metrics.jsonl").exists():
            lines.append(f"| `{preset}` | not run | | | | |")
            continue
        curve = validation_curve(RESULTS / folder)
        one, two = _cost(step_cost, preset, 1), _cost(step_cost, preset, 2)
        for threshold in THRESHOLDS[preset]:
            point = first_reaching(curve, threshold)
            if point is None:
                best = max(curve, key=lambda p: p["val_post"]) if curve else None
                seen = (f"not yet (best {100 * best['val_post']:.2f}% at {best['iteration']:,})"
                        if best else "not yet")
                lines.append(f"| `{preset}` | {100 * threshold:g}% | {seen} | | | |")
                continue
            iteration = point["iteration"]
            quiet = f"{iteration * two / 3600:.2f}" if two else "not measured"
            core = f"{iteration * one / 3600:.2f}" if one else "not measured"
            lines.append(f"| `{preset}` | {100 * threshold:g}% | {iteration:,} | "
                         f"{point['hours']:.2f} | {quiet} | {core} |")
    return "\n".join(lines)


def peer_lines(step_cost: dict[str, Any]) -> list[str]:
    """Each peer's accuracy at the core-hours mamlkit's 5w1s run took to reach 97% (quiet cost)."""
    lines = []
    reached = None
    one = _cost(step_cost, "omniglot-5w1s", 1)
    if one and (RESULTS / RUNS["omniglot-5w1s"] / "metrics.jsonl").exists():
        point = first_reaching(validation_curve(RESULTS / RUNS["omniglot-5w1s"]), 0.97)
        reached = point["iteration"] * one / 3600 if point else None
    for name, folder in PEERS.items():
        if not (RESULTS / folder / "metrics.jsonl").exists():
            continue
        curve = validation_curve(RESULTS / folder)
        if not curve:
            continue
        last = curve[-1]
        rate = _cost(step_cost, folder, 1)
        spent = peer_core_hours(last, rate)
        text = (f"- {name}: {100 * last['val_post']:.1f} ± {100 * last['val_post_ci95']:.1f}% "
                f"after {last['iteration']:,} iterations, {spent:.2f} core-hours"
                + (f" at its quiet {rate:.3f} s/it ({last['cpu_hours']:.2f} CPU hours as it ran)"
                   if rate else ""))
        at = accuracy_at(curve, reached, rate) if reached else None
        if at:
            text += (f"; {100 * at['val_post']:.1f} ± {100 * at['val_post_ci95']:.1f}% at "
                     f"iteration {at['iteration']:,}, {peer_core_hours(at, rate):.2f} "
                     f"core-hours, where mamlkit's `omniglot-5w1s` reached 97% "
                     f"({reached:.2f} core-hours)")
            if reached > spent:
                text += " (the peer's run has not spent that budget yet)"
        if one and (RESULTS / RUNS["omniglot-5w1s"] / "metrics.jsonl").exists():
            budget = int(spent * 3600 / one)
            ours = [q for q in validation_curve(RESULTS / RUNS["omniglot-5w1s"])
                    if q["iteration"] <= budget]
            if ours:
                text += (f"; mamlkit's `omniglot-5w1s` within the same core-hours (iteration "
                         f"{ours[-1]['iteration']:,} of the {budget:,} they buy): "
                         f"{100 * ours[-1]['val_post']:.1f} ± "
                         f"{100 * ours[-1]['val_post_ci95']:.1f}%")
        lines.append(text + f" (`{folder}/`).")
    return lines


def plot(step_cost: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_iteration, by_hour) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for preset, folder in RUNS.items():
        if not (RESULTS / folder / "metrics.jsonl").exists():
            continue
        curve = validation_curve(RESULTS / folder)
        iterations = [p["iteration"] for p in curve]
        accuracy = [100 * p["val_post"] for p in curve]
        by_iteration.plot(iterations, accuracy, marker="o", label=preset)
        one = _cost(step_cost, preset, 1)
        if one:
            by_hour.plot([i * one / 3600 for i in iterations], accuracy, marker="o",
                         label=f"{preset} (quiet core-hours)")
        by_hour.plot([p["hours"] for p in curve], accuracy, linestyle=":",
                     label=f"{preset} (recorded wall time)")
        if preset in PAPER:
            by_iteration.axhline(100 * PAPER[preset], color="gray", linewidth=0.8)
    for name, folder in PEERS.items():
        if (RESULTS / folder / "metrics.jsonl").exists():
            curve = validation_curve(RESULTS / folder)
            rate = _cost(step_cost, folder, 1)
            by_hour.plot([peer_core_hours(p, rate) for p in curve],
                         [100 * p["val_post"] for p in curve], marker="s",
                         label=f"{name} ({'quiet core-hours' if rate else 'its CPU hours'})")
    for axis in (by_iteration, by_hour):
        for threshold in sorted(set().union(*THRESHOLDS.values())):
            axis.axhline(100 * threshold, color="gray", linestyle="--", linewidth=0.5)
        axis.set_ylim(70, 100)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    by_iteration.set(xlabel="meta-iteration", ylabel="validation accuracy after 1 step (%)",
                     title="Omniglot paper presets")
    by_hour.set(xlabel="hours", title="against time")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true",
                        help="measure the presets' seconds per iteration (on a quiet machine)")
    parser.add_argument("--data-root", default="../shared/data/omniglot")
    parser.add_argument("--window", type=int, default=50,
                        help="iterations per metrics record while measuring (the presets': 50)")
    parser.add_argument("--preset", action="append", choices=list(RUNS),
                        help="measure only this preset (repeatable; default: all)")
    args = parser.parse_args()
    step_cost = read_step_cost()
    if args.measure:
        for preset in args.preset or RUNS:
            rates = [measure_step_cost(preset, args.data_root, threads, args.window)
                     for threads in (1, 2)]
            step_cost[preset] = {"cpu": cpu_model(), "cores": os.cpu_count(), "rates": rates}
            print(preset, rates)
        (RESULTS / "step_cost.json").write_text(json.dumps(step_cost, indent=1) + "\n")
    text = ["# Omniglot paper presets: time to accuracy", "",
            "Validation accuracy after one step (100 held-out tasks of the test characters, which "
            "the paper's protocol uses for validation too, every 500 iterations) of the "
            "committed runs under `paper/`. Written by "
            "`benchmarks/omniglot_time_to_accuracy.py`.", "", table(step_cost), ""]
    for preset, entry in step_cost.items():  # mamlkit's presets, then peers' runs by folder
        rates = ", ".join(f"{r['threads']} thread(s) {r['seconds_per_iteration']:.2f} s/it "
                          f"(load {r['load_average_before']})" for r in entry["rates"])
        text.append(f"- `{preset}` on a quiet {entry['cpu']}: {rates}.")
    text += peer_lines(step_cost)
    (RESULTS / "time_to_accuracy.md").write_text("\n".join(text) + "\n")
    plot(step_cost, RESULTS / "time_to_accuracy.png")
    print("\n".join(text))


if __name__ == "__main__":
    main()
