"""PNG figures of a run: learning curves, and adaptation to held-out tasks (Finn et al. Fig. 2)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mamlkit.algorithms import MAML  # noqa: E402
from mamlkit.build import EVAL_SEED, build_tasks  # noqa: E402
from mamlkit.tasks import Sinusoid  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def learning_curve(runs: dict[str, Path], out: Path) -> Path:
    """Training meta-loss and held-out pre/post-adaptation metric against iterations."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, run_dir) in enumerate(runs.items()):
        records = read_metrics(run_dir)
        color = f"C{i}"
        train = [(r["iteration"], r["loss"]) for r in records if "loss" in r]
        if train:
            ax_loss.plot(*zip(*train, strict=True), color=color, label=name)
        for key, style in (("val_pre", ":"), ("val_post", "-")):
            points = [(r["iteration"], r[key]) for r in records if key in r]
            if points:
                label = f"{name} {'before' if key == 'val_pre' else 'after'} adaptation"
                ax_val.plot(*zip(*points, strict=True), style, color=color, label=label)
    ax_loss.set(xlabel="iteration", ylabel="meta-training query loss", yscale="log",
                title="meta-training loss")
    ax_val.set(xlabel="iteration", ylabel="held-out query metric", title="held-out tasks")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@torch.no_grad()
def sinusoid_adaptation(learners: dict[str, MAML], out: Path, num_tasks: int = 3,
                        steps: tuple[int, ...] = (0, 1, 10)) -> Path:
    """True function, the K support points and predictions after 0, 1 and 10 steps per run."""
    config = next(iter(learners.values())).config
    tasks = build_tasks(config, "test")
    assert isinstance(tasks, Sinusoid)
    batch, amp, phase = tasks.sample_with_parameters(num_tasks, EVAL_SEED)
    grid = torch.linspace(*tasks.x_range, 200).unsqueeze(-1)
    fig, axes = plt.subplots(len(learners), num_tasks, figsize=(4.2 * num_tasks,
                                                              3.4 * len(learners)),
                             squeeze=False, sharex=True)
    for row, (name, learner) in enumerate(learners.items()):
        lr = learner.config.eval_inner_lr or learner.config.inner_lr
        for col in range(num_tasks):
            ax = axes[row][col]
            sx, sy = batch.support[0][col], batch.support[1][col]
            ax.plot(grid, Sinusoid.function(grid, amp[col], phase[col]), "r", lw=2,
                    label="ground truth")
            for i, k in enumerate(steps):
                with torch.enable_grad():
                    params = learner.adapt(sx, sy, steps=k, inner_lr=lr)
                prediction = learner(grid, {n: p.detach() for n, p in params.items()})
                style = ":" if k == 0 else "--"
                ax.plot(grid, prediction, style, color=f"C{i}",
                        label="pre-update" if k == 0 else f"{k} grad step{'s' * (k > 1)}")
            ax.plot(sx, sy, "^", color="purple", ms=7, label=f"{len(sx)} support points")
            ax.set_title(f"{name}: task {col + 1}", fontsize=10)
            if col == 0:
                ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
