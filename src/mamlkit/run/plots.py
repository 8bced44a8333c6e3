"""Figures of runs, as PNG and PDF, for every kind of task; the task's metric decides what is
drawn, and every axis names its quantity and unit (MSE; accuracy in %, as ``eval`` prints it;
average return).

Supervised runs: learning curves of the meta-loss and the query metric before and after
adaptation, and adaptation to held-out tasks (sinusoid: Finn et al. Fig. 2; images: predicted
labels). RL runs: the return before and after adaptation and the policy's std, and for 2D
navigation trajectories before and after adaptation with the goals (Fig. 4). Runs whose configs
differ only in their seed are one curve: the mean over seeds with a 95% CI band across seeds;
a single run's validation points carry their CI over the validation tasks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from mamlkit.run import components  # noqa: E402
from mamlkit.run.adapted import adapted_policy, inner_lr_at_eval  # noqa: E402
from mamlkit.run.build import EVAL_SEED, build_tasks  # noqa: E402
from mamlkit.run.compare import Group, group_by_seed, mean_ci95_across, metric_name  # noqa: E402
from mamlkit.run.config import Config, ConfigError  # noqa: E402
from mamlkit.run.load import Loaded  # noqa: E402
from mamlkit.run.metrics import read_metrics  # noqa: E402
from mamlkit.tasks import RLTasks, Sinusoid, generator_from  # noqa: E402

LOSS_NAMES = {"mse": "MSE", "accuracy": "cross-entropy"}
Series = tuple[list[float], list[float], list[float] | None]  # iterations, values, CI or None


def metric_of(config: Config) -> str:
    """The metric a run reports, as its task registered it: ``return`` (RL), ``mse``
    (regression) or ``accuracy``."""
    return components.task(config.task).metric


def figure_of(config: Config) -> str | None:
    """The adaptation picture of a run's task (``function``, ``images``, ``trajectories``)."""
    return components.task(config.task).figure


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _panel(index: int) -> str:
    return f"({chr(ord('a') + index)})"


def _series(records: list[dict], key: str, scale: float) -> Series:
    """One run's ``key`` against iterations, with its ``key_ci95`` where recorded."""
    rows = [r for r in records if key in r and r[key] is not None]
    x = [r["iteration"] for r in rows]
    y = [r[key] * scale for r in rows]
    ci = ([r[f"{key}_ci95"] * scale for r in rows] if rows and all(f"{key}_ci95" in r
                                                                   for r in rows) else None)
    return x, y, ci


def group_series(group: Group, key: str, scale: float = 1.0) -> Series:
    """A group's ``key``: the run's own for one seed; for several, mean and 95% CI across
    seeds at the iterations every seed logged."""
    per_run = [_series(read_metrics(path), key, scale) for path in group.runs.values()]
    if len(per_run) == 1:
        return per_run[0]
    tables = [dict(zip(x, y, strict=True)) for x, y, _ in per_run]
    common = sorted(set.intersection(*(set(t) for t in tables)))
    stats = [mean_ci95_across([t[i] for t in tables]) for i in common]
    return common, [m for m, _ in stats], [c for _, c in stats]


def _draw(ax: Axes, series: Series, color: str, style: str, marker: str | None = None,
          thin: bool = False, floor: float | None = None) -> bool:
    """A line (markers where validation points are, so one point shows) and its CI band, cut
    at ``floor`` for a quantity that cannot go below it (an MSE, an accuracy, a std): the
    normal approximation's interval may, the quantity may not. True if a band was drawn."""
    x, y, ci = series
    if not x:
        return False
    ax.plot(x, y, linestyle=style, marker=marker, markersize=4, color=color,
            lw=1.0 if thin else 1.6, alpha=0.55 if thin else 1.0)
    if thin or ci is None or not any(c > 0 for c in ci):  # no band on the noisy batch lines
        return False
    low = [a - c if floor is None else max(a - c, floor) for a, c in zip(y, ci, strict=True)]
    high = [a + c for a, c in zip(y, ci, strict=True)]
    if len(x) == 1:
        ax.errorbar(x, y, yerr=[[y[0] - low[0]], [high[0] - y[0]]], color=color, capsize=3,
                    lw=1.0, fmt="none")
    else:
        ax.fill_between(x, low, high, color=color, alpha=BAND_ALPHA, lw=0)
    return True


BAND_ALPHA = 0.18
BAND_LABEL = "shaded: 95% CI (over tasks; over seeds for several)"


def _band_handle() -> Patch:
    """The legend entry that says what a shaded band is."""
    return Patch(color="0.3", alpha=BAND_ALPHA * 2, lw=0, label=BAND_LABEL)


def _handles(groups: Sequence[Group], styles: Sequence[tuple],
             banded: bool = False) -> list[list[Artist]]:
    """Line styles name the quantities, colours the runs: a legend row each (one entry per
    style and per run, not per pair; no colour row for a lone run); ``banded`` adds what the
    shaded bands are."""
    kinds: list[Artist] = [Line2D([], [], color="0.3", linestyle=s, marker=m, markersize=4,
                                  lw=1.0 if thin else 1.6, label=label)
                           for label, s, m, thin in styles]
    if banded:
        kinds.append(_band_handle())
    runs: list[Artist] = [Line2D([], [], color=f"C{i}", lw=4, label=g.label)
                          for i, g in enumerate(groups)]
    alone = len(groups) == 1 and groups[0].label == groups[0].name
    return [kinds] if alone else [kinds, runs]


def bottom_legend(fig: Figure, rows: Sequence[Sequence], per_row: int = 5) -> None:
    """The figure's legend below its panels, where it hides no curve: each row of handles on
    lines of at most ``per_row`` entries."""
    lines = [list(row[i:i + per_row]) for row in rows for i in range(0, len(row), per_row)]
    height = fig.get_figheight()
    for n, handles in enumerate(reversed(lines)):
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
                   frameon=False, bbox_to_anchor=(0.5, (0.02 + 0.28 * n) / height))
    fig.tight_layout(rect=(0, (0.12 + 0.28 * len(lines)) / height, 1, 1))


def plain_log_axis(ax: Axes) -> None:
    """A log y axis labelled 0.5, 1, 2 (not 5×10⁻¹): ticks at 1-2-5 or finer for short ranges."""
    shown = [float(y) for line in ax.get_lines()
             for y in np.asarray(line.get_ydata(), dtype=float) if y > 0]
    low, high = (min(shown), max(shown)) if shown else ax.get_ylim()
    decades = math.log10(high / low) if low > 0 else 3
    subs = (1.0, 2.0, 3.0, 5.0, 7.0) if decades < 1.5 else (1.0, 2.0, 5.0) if decades < 4 \
        else (1.0,)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _finish(fig: Figure, axes: Sequence[Axes], handles: Sequence) -> Figure:
    """Grids, whole-number iteration ticks (a 5-iteration run has no iteration 1.5), legend."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom_legend(fig, handles)
    return fig


def save(fig: Figure, out: Path) -> list[Path]:
    """``out`` as PNG and beside it the same figure as PDF (vector, for papers)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    pdf = out.with_suffix(".pdf")
    fig.savefig(out, dpi=150)
    fig.savefig(pdf)
    plt.close(fig)
    return [out, pdf]


TRAIN_STYLES = {"val_pre": ("held-out, before adaptation", ":", "v", False),
                "val_post": ("held-out, adapted", "-", "o", False),
                "train_post": ("meta-training batch, adapted", "--", None, True)}


def supervised_figure(groups: Sequence[Group], metric: str) -> Figure:
    """(a) meta-training query loss, (b) query metric before and after adaptation."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    scale, banded = _scale(metric), False
    for i, group in enumerate(groups):  # losses, MSE and accuracy are never below 0
        banded |= _draw(ax_loss, group_series(group, "loss"), f"C{i}", "-", floor=0.0)
        for key, (_, style, marker, thin) in TRAIN_STYLES.items():
            banded |= _draw(ax_val, group_series(group, key, scale), f"C{i}", style, marker,
                            thin, floor=0.0)
    ax_loss.set(xlabel="iteration", ylabel=f"meta-training query loss ({LOSS_NAMES[metric]})",
                title="(a) meta-training loss")
    values = [y for line in ax_loss.get_lines() for y in line.get_ydata()]
    if values and min(values) > 0 and max(values) / min(values) >= 10:  # else linear reads best
        plain_log_axis(ax_loss)
    ax_val.set(xlabel="iteration", ylabel=f"query {metric_name(metric)}",
               title="(b) before and after adaptation")
    handles = _handles(groups, list(TRAIN_STYLES.values()), banded)
    return _finish(fig, (ax_loss, ax_val), handles)


RL_STYLES = {"pre_return": ("meta-training batch, before adaptation", ":", None, True),
             "post_return": ("meta-training batch, adapted", "-", None, True),
             "val_pre": ("held-out, before adaptation", ":", "v", False),
             "val_post": ("held-out, adapted", "-", "o", False)}


def rl_figure(groups: Sequence[Group]) -> Figure:
    """(a) average return before and after adaptation, (b) the policy's standard deviation."""
    fig, (ax_ret, ax_std) = plt.subplots(1, 2, figsize=(12, 4.2),
                                         gridspec_kw={"width_ratios": [2, 1]})
    banded = False
    for i, group in enumerate(groups):  # returns may be negative; a std may not
        for key, (_, style, marker, thin) in RL_STYLES.items():
            banded |= _draw(ax_ret, group_series(group, key), f"C{i}", style, marker, thin)
        banded |= _draw(ax_std, group_series(group, "std"), f"C{i}", "-", floor=0.0)
    ax_ret.set(xlabel="iteration", ylabel="average return", title="(a) return")
    ax_std.set(xlabel="iteration", ylabel="policy std (mean over action dimensions)",
               title="(b) policy standard deviation")
    return _finish(fig, (ax_ret, ax_std), _handles(groups, list(RL_STYLES.values()), banded))


def learning_curve_figure(groups: Sequence[Group], metric: str) -> Figure:
    """The learning curves of ``groups``, drawn for their metric."""
    return rl_figure(groups) if metric == "return" else supervised_figure(groups, metric)


def _sinusoid_panel(ax: Axes, learner: Loaded, support: tuple, truth: tuple, grid: torch.Tensor,
                    steps: tuple[int, ...]) -> None:
    """Ground truth, the support points and ``learner``'s fit after each number of ``steps``."""
    sx, sy = support
    lr = inner_lr_at_eval(learner.config, max(steps))
    ax.plot(grid, Sinusoid.function(grid, *truth), "r", lw=2, label="ground truth")
    for i, k in enumerate(steps):
        with torch.enable_grad():
            params = learner.adapt(sx, sy, steps=k, inner_lr=lr)
        prediction = learner(grid, {n: p.detach() for n, p in params.items()})
        ax.plot(grid, prediction, ":" if k == 0 else "--", color=f"C{i}",
                label="pre-update" if k == 0 else f"{k} grad step{'s' * (k > 1)}")
    ax.plot(sx, sy, "^", color="purple", ms=7, label=f"{len(sx)} support points")
    ax.set_ylabel("y")
    ax.grid(alpha=0.3)


@torch.no_grad()
def sinusoid_figure(learners: dict[str, Loaded], num_tasks: int = 3,
                    steps: tuple[int, ...] = (0, 1, 10), by_task: bool = False) -> Figure:
    """True function, the K support points and predictions after 0, 1 and 10 steps per run,
    on the same held-out tasks for every run (drawn with the first run's config).

    One row per run and a column per task; ``by_task``: one row per task and the runs side by
    side with a shared y axis (Finn et al. 2017, Fig. 2: MAML beside the pretrained model).
    """
    config = next(iter(learners.values())).config
    tasks = build_tasks(config, "test")
    assert isinstance(tasks, Sinusoid)
    batch, amp, phase = tasks.sample_with_parameters(num_tasks, EVAL_SEED)
    grid = torch.linspace(*tasks.x_range, 200).unsqueeze(-1)
    rows, cols = (num_tasks, len(learners)) if by_task else (len(learners), num_tasks)
    fig, axes = plt.subplots(rows, cols, squeeze=False, sharex=True, sharey="row" if by_task
                             else False, figsize=(4.2 * cols, 3.4 * rows + 0.4))
    for r, (name, learner) in enumerate(learners.items()):
        for t in range(num_tasks):
            row, col = (t, r) if by_task else (r, t)
            ax = axes[row][col]
            _sinusoid_panel(ax, learner, (batch.support[0][t], batch.support[1][t]),
                            (amp[t], phase[t]), grid, steps)
            ax.set_title(f"{_panel(row * cols + col)} {name}: amplitude {float(amp[t]):.2f}, "
                         f"phase {float(phase[t]):.2f}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("x")
    bottom_legend(fig, [axes[0][0].get_legend_handles_labels()[0]])
    return fig


@torch.no_grad()
def classification_figure(learner: Loaded, name: str, queries_per_class: int = 3) -> Figure:
    """One held-out task: support images with labels, query images with the labels predicted
    before and after adaptation (green right, red wrong)."""
    config = learner.config
    tasks = build_tasks(config, "test")
    assert not isinstance(tasks, RLTasks)
    batch = tasks.sample(1, generator_from(EVAL_SEED))
    (sx, sy), (qx, qy) = (t[0] for t in batch.support), (t[0] for t in batch.query)
    keep = torch.cat([torch.nonzero(qy == c).flatten()[:queries_per_class]
                      for c in range(config.ways)])
    qx, qy = qx[keep], qy[keep]
    steps = max(config.eval_steps)
    with torch.enable_grad():
        adapted = learner.adapt(sx, sy, steps=steps, inner_lr=inner_lr_at_eval(config, steps))
    before = learner(torch.cat([sx, qx]))[len(sx):].argmax(-1)
    after = learner(torch.cat([sx, qx]), {n: p.detach() for n, p in adapted.items()})
    after = after[len(sx):].argmax(-1)
    columns = max(len(sx), len(qx))
    fig, axes = plt.subplots(3, columns, figsize=(0.9 * columns, 3.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    rows = [(sx, sy, None, "(a) support set, true labels"),
            (qx, qy, before, "(b) query, predicted before adaptation"),
            (qx, qy, after, f"(c) query, predicted after {steps} steps")]
    for r, (images, labels, predicted, title) in enumerate(rows):
        if predicted is not None:
            title += f": accuracy {100 * (predicted == labels).float().mean():.0f}%"
        axes[r][0].set_title(title, fontsize=8, loc="left")
        for i in range(len(images)):
            ax, label = axes[r][i], labels[i].item()
            image = images[i]
            if image.shape[0] == 3:  # RGB: channels last for imshow
                ax.imshow(image.permute(1, 2, 0).clamp(0, 1))
            else:
                ax.imshow(image.squeeze(0), cmap="gray_r")
            shown = label if predicted is None else predicted[i].item()
            color = "black" if predicted is None else "green" if shown == label else "red"
            ax.text(0.5, -0.15, f"{shown}", transform=ax.transAxes, ha="center", fontsize=7,
                    color=color)
    fig.suptitle(f"{name}: a held-out {config.ways}-way {config.shots}-shot task, iteration "
                 f"{learner.iteration}", fontsize=9)
    # no tight_layout: the row titles run over the images beside the first on purpose
    fig.subplots_adjust(left=0.01, right=0.99, top=0.82, bottom=0.06, hspace=0.75, wspace=0.1)
    return fig


NAV_STYLES = {0: ("0.6", "before adaptation"), 1: ("C0", "after 1 step"),
              3: ("C2", "after 3 steps")}


def _checkpoint_text(learner: Loaded) -> str:
    kind = "best validation return" if str(learner.checkpoint).startswith("best") else "latest"
    return f"checkpoint of iteration {learner.iteration} ({kind})"


def nav2d_figure(learner: Loaded, name: str, num_tasks: int = 4, shown: int = 5) -> Figure:
    """Sampled trajectories of held-out goals before adaptation and after 1 and 3 steps."""
    config = learner.config
    rl_tasks = build_tasks(config, "test")
    assert isinstance(rl_tasks, RLTasks)
    tasks = rl_tasks.sample_tasks(num_tasks, generator_from(EVAL_SEED))
    inner_lr = inner_lr_at_eval(config)
    steps = list(NAV_STYLES)
    returns, kept = rl_tasks.returns_after_steps(
        tasks, generator_from(EVAL_SEED + 1), adapted_policy(learner.learner, inner_lr), steps,
        keep_episodes=True)
    fig, axes = plt.subplots(1, num_tasks, figsize=(4 * num_tasks, 4.7), squeeze=False)
    for t, ax in enumerate(axes[0]):
        for k, episodes in zip(steps, kept, strict=True):
            color, label = NAV_STYLES[k]
            for n in range(min(shown, episodes.num_trajectories)):
                xy = episodes.observations[t, n][episodes.mask[t, n] > 0]
                ax.plot(xy[:, 0], xy[:, 1], color=color, lw=0.9, alpha=0.8,
                        label=label if n == 0 else None)
        ax.plot(0, 0, "ks", markersize=5, label="start")
        ax.plot(*tasks[t]["goal"], "r*", markersize=14, label="goal")
        shown_returns = ", ".join(f"{('before', '1 step', '3 steps')[i]} {returns[i, t]:.1f}"
                                  for i in range(len(steps)))
        ax.set(xlim=(-0.7, 0.7), ylim=(-0.7, 0.7), aspect="equal", xlabel="x", ylabel="y",
               title=f"{_panel(t)} held-out goal {t + 1}, average return\n{shown_returns}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: {_checkpoint_text(learner)}, inner lr {inner_lr:g}", fontsize=10)
    bottom_legend(fig, [axes[0][0].get_legend_handles_labels()[0]])
    return fig


def _one_metric(learners: dict[str, Loaded]) -> str:
    metrics = {metric_of(learner.config) for learner in learners.values()}
    if len(metrics) > 1:
        raise ConfigError(f"These runs report different metrics ({', '.join(sorted(metrics))});"
                          " plot runs of one metric at a time.")
    return metrics.pop()


def _adaptation(learners: dict[str, Loaded], out_dir: Path, baseline: bool = False) -> list[Path]:
    """The adaptation pictures: one for function-fitting runs together (with a ``baseline``, the
    last learner, the runs side by side on each task), one per image or trajectory run."""
    figures = {name: figure_of(learner.config) for name, learner in learners.items()}
    if all(figure == "function" for figure in figures.values()):
        figure = sinusoid_figure(learners, num_tasks=2, by_task=True) if baseline \
            else sinusoid_figure(learners)
        return save(figure, out_dir / "adaptation.png")
    written, single = [], len(learners) == 1
    for name, learner in learners.items():
        suffix = "" if single else "-" + re.sub(r"[^\w.-]+", "_", name).strip("_")
        if figures[name] == "images":
            written += save(classification_figure(learner, name),
                            out_dir / f"adaptation{suffix}.png")
        if figures[name] == "trajectories":
            written += save(nav2d_figure(learner, name), out_dir / f"trajectories{suffix}.png")
    return written


def _baseline_name(baseline: Loaded) -> str:
    config = baseline.config
    return "pretrained (α = 0)" if config.inner_lr == 0 else "baseline"


def _check_baseline(learners: dict[str, Loaded], baseline: Loaded, path: Path) -> None:
    """A baseline goes beside sinusoid runs only, as a sinusoid run itself (one sentence)."""
    first = next(iter(learners.values())).config
    if figure_of(first) != "function" or figure_of(baseline.config) != "function":
        raise ConfigError(f"--baseline draws a sinusoid run beside sinusoid runs; {path} is a "
                          f"{baseline.config.task} run and the runs are {first.task} runs.")


def plot_runs(runs: dict[str, Path], out_dir: Path, baseline: Path | None = None,
              data_root: str | Path | None = None) -> list[Path]:
    """Every figure of ``runs`` into ``out_dir`` (PNG and PDF): learning curves with seeds of
    one experiment as one curve, then adaptation pictures of each experiment's first run.

    ``baseline`` (a sinusoid run, e.g. the alpha = 0 "pretrained" one) joins the learning curves
    and is drawn beside the runs on the same held-out tasks (Finn et al. 2017, Fig. 2).
    ``data_root`` overrides the runs' dataset folder (see ``load``).
    """
    from mamlkit.run.load import load

    groups = group_by_seed(runs)
    learners = {}  # loaded before anything is written: no half output for a run without weights
    for group in groups:
        learner = load(group.first, data_root=data_root)
        several = len(group.runs) > 1
        learners[f"{group.name}, seed {learner.config.seed}" if several else group.name] = learner
    if baseline is not None:
        extra = load(baseline)
        _check_baseline(learners, extra, baseline)
        name = _baseline_name(extra)
        learners[name] = extra
        groups = [*groups, Group(name, {name: Path(baseline)})]
    metric = _one_metric(learners)
    written = save(learning_curve_figure(groups, metric), out_dir / "learning_curve.png")
    torch.set_num_threads(min(learner.config.threads for learner in learners.values()))
    return written + _adaptation(learners, out_dir, baseline is not None)


__all__ = ["bottom_legend", "classification_figure", "group_series", "learning_curve_figure",
           "metric_of", "nav2d_figure", "plain_log_axis", "plot_runs", "rl_figure", "save",
           "sinusoid_figure", "supervised_figure"]
