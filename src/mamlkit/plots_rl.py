"""PNG figures of meta-RL runs: learning curves (pre/post-adaptation return, policy std) and, for
2D navigation, trajectories before and after adaptation with the goals (Finn et al. Fig. 4)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mamlkit.build import EVAL_SEED  # noqa: E402
from mamlkit.plots import read_metrics  # noqa: E402
from mamlkit.tasks import generator_from  # noqa: E402


def learning_curve(runs: dict[str, Path], out: Path) -> Path:
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
    from mamlkit.evaluate_rl import adaptation_returns
    from mamlkit.train_rl import build_env, load_policy, settings_of

    policy, config, which = load_policy(run_dir)
    torch.set_num_threads(config.threads)
    env = build_env(config)
    tasks = env.sample_tasks(num_tasks, generator_from(EVAL_SEED))
    settings = settings_of(config, config.eval_inner_lr or config.inner_lr)
    steps = [0, 1, 3]
    returns, kept = adaptation_returns(env, policy, tasks, settings, steps,
                                       generator_from(EVAL_SEED + 1), keep_episodes=True)
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
                 f"inner lr {settings.inner_lr:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def cmd_plot_rl(args) -> int:
    """``mamlkit plot`` for meta-RL runs."""
    from mamlkit import config as config_lib

    runs = {Path(r).name: Path(r) for r in args.runs}
    out_dir = Path(args.out) if args.out else Path(args.runs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [learning_curve(runs, out_dir / "learning_curve.png")]
    for name, path in runs.items():
        if config_lib.load(path / "config.yaml").task == "nav2d":
            target = (out_dir / f"trajectories-{name}.png" if len(runs) > 1
                      else out_dir / "trajectories.png")
            written.append(nav2d_trajectories(path, target))
    for path in written:
        print(f"wrote {path}")
    return 0
