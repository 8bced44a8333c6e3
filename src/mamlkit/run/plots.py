"""PNG figures of runs, for every kind of task; the task's metric decides what is drawn.

Supervised runs: learning curves of the meta-loss and the query metric (MSE, accuracy) before
and after adaptation, and adaptation to held-out tasks (sinusoid: Finn et al. Fig. 2; images:
predicted labels). RL runs: the return before and after adaptation and the policy's std, and
for 2D navigation trajectories before and after adaptation with the goals (Fig. 4).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mamlkit.algorithms import MAML  # noqa: E402
from mamlkit.run.adapted import adapted_policy, inner_lr_at_eval  # noqa: E402
from mamlkit.run.build import EVAL_SEED, build_tasks  # noqa: E402
from mamlkit.run.metrics import read_metrics  # noqa: E402
from mamlkit.tasks import Sinusoid, generator_from  # noqa: E402


def supervised_learning_curve(runs: dict[str, Path], out: Path) -> Path:
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


def rl_learning_curve(runs: dict[str, Path], out: Path) -> Path:
    """Average return of the meta-training batches before and after adaptation, the held-out
    validation return, and the policy's standard deviation, against iterations."""
    fig, (ax_ret, ax_std) = plt.subplots(1, 2, figsize=(12, 4.2),
                                         gridspec_kw={"width_ratios": [2, 1]})
    for i, (name, run_dir) in enumerate(runs.items()):
        records, color = read_metrics(run_dir), f"C{i}"
        for key, style, label in (("pre_return", ":", "before adaptation"),
                                  ("post_return", "-", "after 1 step"),
                                  ("val_post", "o", "held-out, after 1 step")):
            points = [(r["iteration"], r[key]) for r in records if key in r]
            if points:
                ax_ret.plot(*zip(*points, strict=True), style, color=color, markersize=3,
                            label=f"{name}: {label}")
        points = [(r["iteration"], r["std"]) for r in records if "std" in r]
        if points:
            ax_std.plot(*zip(*points, strict=True), color=color, label=name)
    ax_ret.set(xlabel="iteration", ylabel="average return", title="meta-training return")
    ax_std.set(xlabel="iteration", ylabel="policy std (mean over action dims)",
               title="policy standard deviation")
    for ax in (ax_ret, ax_std):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def nav2d_trajectories(run_dir: Path, out: Path, num_tasks: int = 4,
                       shown: int = 5) -> Path:
    """Sampled trajectories of held-out goals before adaptation and after 1 and 3 steps."""
    from mamlkit.run.load import load

    learner = load(run_dir)
    config, which = learner.config, learner.checkpoint
    torch.set_num_threads(config.threads)
    rl_tasks = build_tasks(config, "test")
    tasks = rl_tasks.sample_tasks(num_tasks, generator_from(EVAL_SEED))
    inner_lr = inner_lr_at_eval(config)
    steps = [0, 1, 3]
    returns, kept = rl_tasks.returns_after_steps(
        tasks, generator_from(EVAL_SEED + 1), adapted_policy(learner, inner_lr), steps,
        keep_episodes=True)
    fig, axes = plt.subplots(1, num_tasks, figsize=(4 * num_tasks, 4.2), squeeze=False)
    styles = {0: ("0.6", "before adaptation"), 1: ("C0", "after 1 step"),
              3: ("C2", "after 3 steps")}
    for t, ax in enumerate(axes[0]):
        goal = tasks[t]["goal"]
        for k, episodes in zip(steps, kept, strict=True):
            color, label = styles[k]
            for n in range(min(shown, episodes.num_trajectories)):
                alive = episodes.mask[t, n] > 0
                xy = episodes.observations[t, n][alive]
                ax.plot(xy[:, 0], xy[:, 1], color=color, lw=0.9, alpha=0.8,
                        label=f"{label} ({returns[steps.index(k), t]:.1f})" if n == 0 else None)
        ax.plot(0, 0, "ks", markersize=5)
        ax.plot(*goal, "r*", markersize=14, label="goal")
        ax.set(xlim=(-0.7, 0.7), ylim=(-0.7, 0.7), aspect="equal", title=f"held-out goal {t + 1}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{Path(run_dir).name} ({which}): trajectories and average returns, "
                 f"inner lr {inner_lr:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def learning_curve(runs: dict[str, Path], out: Path) -> Path:
    """The learning curves of ``runs``, drawn for their kind (return or a query metric)."""
    rl = any(any("post_return" in r for r in read_metrics(path)) for path in runs.values())
    return (rl_learning_curve if rl else supervised_learning_curve)(runs, out)


def plot_runs(runs: dict[str, Path], out_dir: Path) -> list[Path]:
    """Every figure of ``runs`` into ``out_dir``: learning curves, then adaptation pictures."""
    from mamlkit.run.load import load

    written = [learning_curve(runs, out_dir / "learning_curve.png")]
    learners = {name: load(path) for name, path in runs.items()}
    torch.set_num_threads(min(learner.config.threads for learner in learners.values()))
    tasks = {name: learner.config.task for name, learner in learners.items()}
    if all(task == "sinusoid" for task in tasks.values()):
        return [*written, sinusoid_adaptation(learners, out_dir / "adaptation.png")]
    single = len(runs) == 1
    for name, learner in learners.items():
        if tasks[name] == "omniglot":
            out = out_dir / ("adaptation.png" if single else f"adaptation-{name}.png")
            written.append(classification_adaptation(learner, out))
        if tasks[name] == "nav2d":
            out = out_dir / ("trajectories.png" if single else f"trajectories-{name}.png")
            written.append(nav2d_trajectories(runs[name], out))
    return written
