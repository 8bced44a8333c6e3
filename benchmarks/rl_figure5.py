"""The paper's RL figures as a table: return after 0-3 policy-gradient steps for MAML, the
pretrained policy and a random initial policy, beside the returns of Finn et al. 2017: Tables 4
and 5, and the data its code plotted in Figures 4 and 5.

Reads the committed runs under ``benchmarks/results/rl/``: for each environment the MAML run
``<preset>/`` and its pretrained baseline ``<preset>-inner_lr0/`` (``mamlkit train PRESET``,
``mamlkit train PRESET --set inner_lr=0 --out <preset>-inner_lr0``, then ``mamlkit eval`` on
both, which also evaluates the untrained initial policy), and writes ``figure5.md`` (the
table, with the budget of each run) and ``figure5.png`` (return against gradient steps, one
panel per environment).

    python benchmarks/rl_figure5.py            # after the runs' eval.json files exist
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mamlkit.run.errors import RunDirectoryError
from mamlkit.run.metrics import elapsed_seconds
from mamlkit.run.paired import paired_difference
from mamlkit.run.rundir import read_config

RESULTS = Path(__file__).resolve().parent / "results" / "rl"
# Folder under results/rl/ of each MAML run -> its title; the pretrained run is the folder with
# "-inner_lr0" appended. The paper-size runs live under paper/.
PRESETS = {"nav2d": "2D navigation", "paper/nav2d-paper": "2D navigation, paper size",
           "cheetah-vel-quick": "half-cheetah, goal velocity",
           "cheetah-dir-quick": "half-cheetah, forward/backward",
           "paper/cheetah-dir": "half-cheetah, forward/backward, paper size",
           "ant-vel-quick": "ant, goal velocity", "ant-dir-quick": "ant, forward/backward"}
# Finn et al. 2017 (arXiv 1703.03400v3), Appendix C.2: the only returns the paper gives as
# numbers, MAML after 0 / 1 / 2 / 3 gradient steps. Table 4: 2D navigation (H = 100); Table 5:
# half-cheetah forward/backward (H = 200, so the quick preset's H = 100 sees about half of it).
TABLE_4 = "-40.41 / -11.68 / -3.33 / -3.23 (Table 4)"
TABLE_5 = "-50.69 / 293.19 / 313.48 / 315.65 (Table 5, H = 200)"
# Figures 4 and 5 as numbers: the paper's code keeps the data it plotted (cbfinn/maml_rl,
# icml/icml_<env>_results_{maml,pretrain,random,oracle}.pkl, read by icml/make_<env>_plots.py;
# the point's pretrained file is sens0): the mean over the 40 evaluation tasks of
# ``task_avg_returns``. Its cheetahdirec MAML data are Table 5 to the last digit.
FIGURE_4 = {"MAML": TABLE_4,
            "pretrained": "-40.81 / -19.73 / -11.72 / -8.47 (Fig. 4 data)",
            "random": "-82.66 / -57.96 / -53.84 / -46.81 (Fig. 4 data)"}


def fig5(returns: str) -> str:
    """A curve of Figure 5 from the paper's code's data (locomotion, H = 200)."""
    return f"{returns} (Fig. 5 data, H = 200)"


CHEETAH_DIR = {"MAML": TABLE_5,
               "pretrained": fig5("-43.03 / -24.75 / -12.85 / 19.57"),
               "random": fig5("-35.73 / 21.83 / 62.32 / 86.18")}
CHEETAH_VEL = {"MAML": fig5("-129.53 / -78.57 / -66.62 / -60.78"),
               "pretrained": fig5("-158.00 / -135.39 / -128.47 / -133.61"),
               "random": fig5("-254.83 / -254.33 / -246.79 / -230.83")}
ANT_DIR = {"MAML": fig5("8.66 / 499.15 / 500.68 / 499.11"),
           "pretrained": fig5("3.16 / 1.27 / 6.51 / 6.86"),
           "random": fig5("3.11 / 9.25 / 15.96 / 26.11")}
ANT_VEL = {"MAML": fig5("30.58 / 96.74 / 100.06 / 101.41"),
           "pretrained": fig5("-1.83 / 6.11 / 8.47 / 9.47"),
           "random": fig5("-78.64 / -62.81 / -48.55 / -35.56")}
# The oracle (a policy trained on each evaluation task, given its parameter), same files.
ORACLE = {"nav2d": -2.29, "cheetah-vel": -54.47, "cheetah-dir": 442.69, "ant-vel": 107.89,
          "ant-dir": 524.80}
PAPER = {"nav2d": FIGURE_4, "paper/nav2d-paper": FIGURE_4,
         "cheetah-vel-quick": CHEETAH_VEL, "cheetah-dir-quick": CHEETAH_DIR,
         "paper/cheetah-dir": CHEETAH_DIR, "ant-vel-quick": ANT_VEL, "ant-dir-quick": ANT_DIR}
ROWS = ("MAML", "pretrained", "random")


def read_run(folder: Path) -> dict[str, Any] | None:
    """eval.json, config.yaml and the training time of one committed run, or None."""
    if not (folder / "eval.json").exists():
        return None
    evaluation = json.loads((folder / "eval.json").read_text())
    config = vars(read_config(folder / "config.yaml"))
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {"eval": evaluation, "config": config, "seconds": training_seconds(records),
            "iterations": records[-1]["iteration"] if records else None}


def training_seconds(records: list[dict[str, Any]]) -> float:
    """Wall time over every process of a run (``seconds`` restarts at 0 when a run resumes)."""
    return elapsed_seconds(records)[-1] if records else 0.0


def curves(preset: str) -> dict[str, dict[str, Any]]:
    """Steps -> {mean, ci95} for MAML, the pretrained policy and the random initial policy."""
    maml, pretrained = read_run(RESULTS / preset), read_run(RESULTS / f"{preset}-inner_lr0")
    found = {}
    if maml:
        found["MAML"] = maml["eval"]["steps"]
        if "random_policy" in maml["eval"]:
            found["random"] = maml["eval"]["random_policy"]["steps"]
    if pretrained:
        found["pretrained"] = pretrained["eval"]["steps"]
    return found


def budget(preset: str) -> str:
    """What produced the MAML run: sampling, outer step, iterations and minutes."""
    run = read_run(RESULTS / preset)
    if run is None:
        return "not run"
    c = run["config"]
    order = "first order" if c.get("first_order") else f"second order ({c.get('estimator')})"
    minutes = f"{run['seconds'] / 60:.1f} min" if run["seconds"] else "?"
    horizon = c["horizon"] or "the environment's"
    return (f"{c['meta_batch_size']} tasks x {c['trajectories']} traj., H = {horizon}, "
            f"{c['outer']} {order}, α = {c['inner_lr']}, {run['iterations']} it., {minutes}; "
            f"eval {run['eval']['num_tasks']} tasks, {run['eval']['checkpoint']}")


def paired_one_step(preset: str) -> str:
    """MAML minus pretrained after one step, paired over tasks, or why it is not known."""
    maml, pretrained = RESULTS / preset, RESULTS / f"{preset}-inner_lr0"
    if not ((maml / "eval.json").exists() and (pretrained / "eval.json").exists()):
        return "not run"
    try:
        result = paired_difference(maml, pretrained)
    except RunDirectoryError as error:
        return f"not available ({str(error).rstrip('.')})"
    one = result["steps"].get("1")
    return f"{one['mean']:+.1f} ± {one['ci95']:.1f}" if one else "not evaluated at 1 step"


def cell(steps: dict[str, Any], step: int) -> str:
    value = steps.get(str(step))
    return "" if value is None else f"{value['mean']:.1f} ± {value['ci95']:.1f}"


def table() -> str:
    """The markdown table: one block of rows per environment."""
    lines = ["| task | policy | 0 steps | 1 step | 2 steps | 3 steps | paper 0 / 1 / 2 / 3 |",
             "|---|---|---|---|---|---|---|"]
    for preset, title in PRESETS.items():
        found = curves(preset)
        for row in ROWS:
            quoted = PAPER.get(preset, {}).get(row, "plot only")
            steps = found.get(row)
            values = [cell(steps, k) if steps else "not run" for k in range(4)]
            lines.append(f"| {title} (`{Path(preset).name}`) | {row} | " + " | ".join(values)
                         + f" | {quoted} |")
    lines += ["", "The paper's oracle (a policy trained for each evaluation task): "
              + ", ".join(f"{name} {value:.2f}" for name, value in ORACLE.items())
              + " (Fig. 4/5 data)."]
    lines += ["", "MAML minus the pretrained policy after one step, task by task on the same "
              "held-out tasks and sampling noise (`mamlkit compare --paired`):", ""]
    lines += [f"- `{Path(preset).name}`: {paired_one_step(preset)}" for preset in PRESETS]
    lines += ["", "Budgets of the MAML runs (the pretrained run has the same keys, `inner_lr=0`):",
              ""] + [f"- `{Path(preset).name}`: {budget(preset)}" for preset in PRESETS]
    return "\n".join(lines) + "\n"


def plot(path: Path) -> None:
    """Return against gradient steps, one panel per environment, 95% intervals as bands."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(PRESETS), figsize=(4 * len(PRESETS), 3.4))
    styles = {"MAML": ("tab:green", "-"), "pretrained": ("tab:blue", "--"),
              "random": ("black", ":")}
    for axis, (preset, title) in zip(axes, PRESETS.items(), strict=True):
        for row, steps in curves(preset).items():
            xs = sorted(int(k) for k in steps)
            mean = [steps[str(k)]["mean"] for k in xs]
            ci = [steps[str(k)]["ci95"] for k in xs]
            color, line = styles[row]
            axis.plot(xs, mean, line, color=color, marker="o", label=row)
            axis.fill_between(xs, [m - c for m, c in zip(mean, ci, strict=True)],
                              [m + c for m, c in zip(mean, ci, strict=True)],
                              color=color, alpha=0.15)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("number of gradient steps")
        axis.set_xticks(range(4))
    axes[0].set_ylabel("average return")
    drawn = [axis for axis in axes if axis.get_legend_handles_labels()[0]]
    if drawn:
        drawn[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    (args.out / "figure5.md").write_text(table())
    plot(args.out / "figure5.png")
    print((args.out / "figure5.md").read_text())


if __name__ == "__main__":
    main()
