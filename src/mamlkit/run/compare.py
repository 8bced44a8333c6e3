"""Runs side by side: seeds of one experiment grouped, and one table over their ``eval.json``.

Runs whose configs differ only in ``seed`` (and in keys that say how a run was computed, not
what: device, threads, batching, ...) are one experiment; figures and tables report them as
the mean over seeds with a 95% confidence interval across seeds (Student's t, since seeds are
few). A single run reports the evaluation's own interval (1.96 standard errors over tasks).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamlkit.run import config as config_lib
from mamlkit.run.config import ConfigError
from mamlkit.run.errors import RunDirectoryError

# keys that change how a run is computed or stored, not the experiment: ignored when grouping
HOW_NOT_WHAT = frozenset({"seed", "description", "device", "threads", "data_root", "download",
                          "checkpoint_every", "batching", "chunk_size", "compile",
                          "checkpoint_inner"})
# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
METRIC_NAMES = {"mse": "MSE", "accuracy": "accuracy (%)", "return": "average return"}
FORMATS = ("md", "csv", "latex")


def metric_name(metric: str) -> str:
    """The metric with its unit, as axes and tables show it (``accuracy (%)``)."""
    return METRIC_NAMES.get(metric, metric)


@dataclass
class Group:
    """Runs of one experiment (one run, or several that differ only in their seed)."""

    name: str
    runs: dict[str, Path]

    @property
    def label(self) -> str:
        n = len(self.runs)
        return self.name if n == 1 else f"{self.name} ({n} seeds)"

    @property
    def first(self) -> Path:
        return next(iter(self.runs.values()))


def mean_ci95_across(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval of a few values (seeds); 0 for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * std / math.sqrt(n)


def mean_ci_text(mean: float, ci: float, pm: str = " ± ") -> str:
    """``0.78 ± 0.15``: the interval to two significant digits, the mean to the same decimals
    (digits beyond the interval's are noise)."""
    if not (math.isfinite(ci) and ci > 0 and math.isfinite(mean)):
        return f"{mean:.4g}{pm}{ci:.2g}"
    decimals = max(0, 1 - math.floor(math.log10(ci)))
    return f"{mean:.{decimals}f}{pm}{ci:.{decimals}f}"


def check_runs(paths: Iterable[str | Path]) -> list[Path]:
    """The run directories, or one sentence about the first path that is not one."""
    checked = []
    for path in map(Path, paths):
        if not path.exists():
            raise RunDirectoryError(f"{path} does not exist; pass run directories made by "
                                    "mamlkit train.")
        if not (path / "config.yaml").is_file():
            raise RunDirectoryError(f"{path} is not a run directory (no config.yaml).")
        checked.append(path)
    return checked


def unique_names(paths: Sequence[Path]) -> dict[str, Path]:
    """Run names for legends and tables: the folder name, or parent/name where two clash."""
    names = [p.name for p in paths]
    return {(f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name): p
            for p in paths}


def _experiment(path: Path) -> dict[str, Any]:
    values = config_lib.load(path / "config.yaml").to_dict()
    return {k: v for k, v in values.items() if k not in HOW_NOT_WHAT}


def _common_name(members: dict[str, Path]) -> str:
    """``a-seed0, a-seed1`` -> ``a``: the names' common prefix without a trailing seed tag
    (the parent folder's name for ``seed0, seed1``)."""
    names = list(members)
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    stem = re.sub(r"(?:[-_.= ]+(?:seed|s))?[-_.= ]*\d*$", "", prefix)
    if stem.lower() in ("", "seed", "s"):
        stem = next(iter(members.values())).resolve().parent.name
    return stem or names[0]


def group_by_seed(runs: dict[str, Path]) -> list[Group]:
    """Runs grouped by experiment (configs equal but for the seed), in the order given."""
    groups: list[tuple[dict[str, Any], dict[str, Path]]] = []
    for name, path in runs.items():
        experiment = _experiment(path)
        for known, members in groups:
            if known == experiment:
                members[name] = path
                break
        else:
            groups.append((experiment, {name: path}))
    return [Group(_common_name(members) if len(members) > 1 else next(iter(members)),
                  members) for _, members in groups]


def read_eval(run: Path) -> dict[str, Any]:
    """A run's ``eval.json``, or one sentence naming the file and saying how to make it: a
    file that does not parse or whose fields have other types than ``evaluate`` writes (an
    edit, a foreign tool) is refused here, before any table is built from it."""
    path = run / "eval.json"
    if not path.is_file():
        raise RunDirectoryError(f"{run} has no eval.json; run 'mamlkit eval {run}' first.")
    try:
        result = json.loads(path.read_text())
        problem = evaluation_problem(result)
    except (ValueError, OSError) as error:  # not JSON, not UTF-8, unreadable
        problem = type(error).__name__ if isinstance(error, OSError) else "not JSON"
    if problem:
        raise RunDirectoryError(f"{path} is not an evaluation ({problem}); run 'mamlkit eval "
                                f"{run}' again.")
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_step(key: str) -> bool:
    return key.isascii() and key.isdigit()


def evaluation_problem(result: Any) -> str | None:
    """What makes ``result`` other than an evaluation as ``evaluate`` writes it, or None:
    ``metric`` a name, ``steps`` step -> {mean, ci95} numbers, optional ``num_tasks`` and
    ``iteration`` whole numbers, ``per_task`` step -> list of numbers, and ``baselines`` and
    ``random_policy`` evaluations of the same form."""
    if not isinstance(result, dict):
        return "not a JSON object"
    if not isinstance(result.get("metric"), str):
        return "'metric' is not a name"
    steps = result.get("steps")
    if not isinstance(steps, dict) or not all(
            _is_step(k) and isinstance(v, dict) and _is_number(v.get("mean"))
            and _is_number(v.get("ci95")) for k, v in steps.items()):
        return "'steps' does not map inner steps to a mean and ci95"
    for key in ("num_tasks", "iteration"):
        if result.get(key) is not None and not (_is_number(result[key])
                                                and float(result[key]).is_integer()):
            return f"{key!r} is not a whole number"
    per_task = result.get("per_task", {})
    if not isinstance(per_task, dict) or not all(
            _is_step(k) and isinstance(v, list) and all(map(_is_number, v))
            for k, v in per_task.items()):
        return "'per_task' does not map inner steps to lists of numbers"
    baselines = result.get("baselines", {})
    if not isinstance(baselines, dict):
        return "'baselines' is not a JSON object"
    nested = dict(baselines)
    if result.get("random_policy") is not None:
        nested["random_policy"] = result["random_policy"]
    for name, other in nested.items():
        problem = evaluation_problem(other)
        if problem:
            return f"{name!r}: {problem}"
    return None


def parse_steps(text: str | None) -> list[str] | None:
    """``"0,1,5"`` -> ``["0", "1", "5"]``; None keeps every step of the evaluations."""
    if text is None:
        return None
    try:
        return [str(int(s)) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--steps takes inner step counts like 0,1,5, not {text!r}.") from None


@dataclass
class Row:
    """One line of the table: a run or a group of seeds, cells ``step -> (mean, ci95)``."""

    label: str
    seeds: int
    tasks: str
    iteration: str
    cells: dict[str, tuple[float, float]]


def _span(values: Iterable[Any]) -> str:
    """``600`` or, where seeds differ, ``150/600``; ``?`` for what an eval.json lacks."""
    distinct = {"?" if v is None else v for v in values}
    numbers = sorted(v for v in distinct if isinstance(v, int | float))
    others = sorted(str(v) for v in distinct if not isinstance(v, int | float))
    return "/".join(str(v) for v in [*numbers, *others]) or "-"


def _row(label: str, results: list[dict[str, Any]], scale: float) -> Row:
    """Mean ± CI per step: the evaluation's own for one run, across seeds for several."""
    cells = {}
    for step in {s for r in results for s in r["steps"]}:
        found = [r["steps"][step] for r in results if step in r["steps"]]
        if len(found) == 1:
            mean, ci = found[0]["mean"], found[0]["ci95"]
        else:
            mean, ci = mean_ci95_across([f["mean"] for f in found])
        cells[step] = (mean * scale, ci * scale)
    return Row(label, len(results), _span(r.get("num_tasks") for r in results),
               _span(r.get("iteration", "?") for r in results), cells)


def baseline_rows(name: str, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The table rows of one evaluation: the run itself, or for a pretrained-baseline run
    (its ``baselines``) its fine-tune row and a row per frozen-feature baseline."""
    baselines = result.get("baselines")
    if not baselines:
        return {name: result}
    return {f"{name}: fine-tune": result,
            **{f"{name}: {baseline}": row for baseline, row in baselines.items()}}


def _rows(label: str, results: list[dict[str, Any]], scale: float) -> list[Row]:
    """The row of an experiment, or its baseline rows where every seed has them."""
    if not all(r.get("baselines") for r in results):
        return [_row(label, results, scale)]
    per_seed = [baseline_rows(label, r) for r in results]
    return [_row(key, [rows[key] for rows in per_seed], scale) for key in per_seed[0]]


def compare_rows(runs: list[Path]) -> tuple[str, list[Row]]:
    """The metric and one row per experiment (plus the untrained policy for RL runs)."""
    groups = group_by_seed(unique_names(check_runs(runs)))
    results = [(g.label, [read_eval(p) for p in g.runs.values()]) for g in groups]
    metrics = {r["metric"] for _, rs in results for r in rs}
    if len(metrics) > 1:
        raise ConfigError(f"These runs report different metrics ({', '.join(sorted(metrics))});"
                          " compare runs of one metric at a time.")
    metric = metrics.pop()
    scale = 100.0 if metric == "accuracy" else 1.0
    rows = [row for label, rs in results for row in _rows(label, rs, scale)]
    # RL: the untrained initial policies of the first experiment's seeds, as ``eval`` shows them
    random = [r["random_policy"] for r in results[0][1] if "random_policy" in r]
    if random:
        seeds = f" ({len(random)} seeds)" if len(random) > 1 else ""
        rows.append(_row(f"random (untrained init){seeds}", random, scale))
        rows[-1].iteration = "0"
    return metric, rows


def _steps_of(rows: list[Row], steps: list[str] | None) -> list[str]:
    return steps or sorted({s for row in rows for s in row.cells}, key=int)


def _cell(row: Row, step: str, pm: str = " ± ") -> str:
    if step not in row.cells:
        return "-"
    return mean_ci_text(*row.cells[step], pm=pm)


def _step_header(step: str) -> str:
    return f"{step} step" + ("" if step == "1" else "s")


def _caption(metric: str, rows: list[Row]) -> str:
    seeds = any(r.seeds > 1 for r in rows)
    over = "over tasks" + ("; across seeds for grouped runs" if seeds else "")
    return f"{metric_name(metric)} on held-out tasks, mean ± 95% CI ({over})"


def markdown(metric: str, rows: list[Row], steps: list[str]) -> str:
    header = ["run", "tasks", "iteration", *(_step_header(s) for s in steps)]
    lines = [_caption(metric, rows), "", "| " + " | ".join(header) + " |",
             "|:--|--:|--:|" + "--:|" * len(steps)]
    for row in rows:
        cells = [row.label, row.tasks, row.iteration, *(_cell(row, s) for s in steps)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(metric: str, rows: list[Row], steps: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "seeds", "tasks", "iteration", "metric",
                     *(f"step_{s}_{part}" for s in steps for part in ("mean", "ci95"))])
    for row in rows:
        values = [x for s in steps for x in (row.cells.get(s) or ("", ""))]
        writer.writerow([row.label, row.seeds, row.tasks, row.iteration, metric_name(metric),
                         *(f"{v:.6g}" if isinstance(v, float) else v for v in values)])
    return out.getvalue().rstrip("\n")


def _tex(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)


def _tex_cell(row: Row, step: str) -> str:
    return "$" + _cell(row, step, r" \pm ") + "$" if step in row.cells else "-"


def latex(metric: str, rows: list[Row], steps: list[str]) -> str:
    """A booktabs tabular (``\\usepackage{booktabs}``), the caption as a comment above it."""
    header = ["run", "tasks", "iteration", *(_step_header(s) for s in steps)]
    caption = _caption(metric, rows).replace("%", r"\%")
    lines = [f"% {caption}",
             r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(header) + r" \\", r"\midrule"]
    for row in rows:
        cells = [_tex(row.label), row.tasks, row.iteration,
                 *(_tex_cell(row, s) for s in steps)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def compare(runs: list[str | Path], fmt: str = "md", steps: list[str] | None = None) -> str:
    """The table of ``runs`` in ``fmt`` (md, csv or latex) over ``steps`` (default: all)."""
    metric, rows = compare_rows([Path(r) for r in runs])
    render = {"md": markdown, "csv": csv_table, "latex": latex}[fmt]
    return render(metric, rows, _steps_of(rows, steps))


__all__ = ["FORMATS", "METRIC_NAMES", "Group", "baseline_rows", "check_runs", "compare",
           "evaluation_problem", "group_by_seed", "mean_ci95_across", "mean_ci_text",
           "metric_name", "parse_steps", "read_eval", "unique_names"]
