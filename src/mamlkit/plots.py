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
        labels = {"val_pre": "held-out, before adaptation", "val_post": "held-out, adapted",
                  "train_post": "meta-training batch, adapted"}
        for key, style in (("val_pre", ":"), ("val_post", "-"), ("train_post", "--")):
            points = [(r["iteration"], r[key]) for r in records if key in r]
            if points:
                label = f"{name}: {labels[key]}"
                ax_val.plot(*zip(*points, strict=True), style, color=color, label=label)
    ax_loss.set(xlabel="iteration", ylabel="meta-training query loss", yscale="log",
                title="meta-training loss")
    ax_val.set(xlabel="iteration", ylabel="query metric", title="before and after adaptation")
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


@torch.no_grad()
def classification_adaptation(learner: MAML, out: Path, queries_per_class: int = 3) -> Path:
    """One held-out task: support images with labels, query images with the labels predicted
    before and after adaptation (green right, red wrong)."""
    config = learner.config
    tasks = build_tasks(config, "test")
    batch = tasks.sample(1, EVAL_SEED)
    (sx, sy), (qx, qy) = (t[0] for t in batch.support), (t[0] for t in batch.query)
    keep = torch.cat([torch.nonzero(qy == c).flatten()[:queries_per_class]
                      for c in range(config.ways)])
    qx, qy = qx[keep], qy[keep]
    steps = max(config.eval_steps)
    with torch.enable_grad():
        adapted = learner.adapt(sx, sy, steps=steps, inner_lr=config.eval_inner_lr)
    before = learner(torch.cat([sx, qx]))[len(sx):].argmax(-1)
    after = learner(torch.cat([sx, qx]), {n: p.detach() for n, p in adapted.items()})
    after = after[len(sx):].argmax(-1)
    columns = max(len(sx), len(qx))
    fig, axes = plt.subplots(3, columns, figsize=(0.9 * columns, 3.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    rows = [(sx, sy, None, "support"), (qx, qy, before, "before"), (qx, qy, after,
                                                                    f"after {steps} steps")]
    for r, (images, labels, predicted, title) in enumerate(rows):
        axes[r][0].set_title(title, fontsize=8, loc="left")
        for i in range(len(images)):
            ax = axes[r][i]
            ax.imshow(images[i].squeeze(0), cmap="gray_r")
            if predicted is None:
                ax.text(0.5, -0.15, f"{labels[i].item()}", transform=ax.transAxes,
                        ha="center", fontsize=7)
            else:
                right = predicted[i].item() == labels[i].item()
                ax.text(0.5, -0.15, f"{predicted[i].item()}", transform=ax.transAxes,
                        ha="center", fontsize=7, color="green" if right else "red")
    fig.suptitle(f"held-out {config.ways}-way {config.shots}-shot task: predicted labels",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
