"""learn2learn's Omniglot MAML example, run on this machine for a wall-clock budget.

    PYTHON=.venv-peers/bin/python bash benchmarks/install_peers.sh   # learn2learn 0.2.0
    python benchmarks/omniglot_learn2learn.py --hours 1.0 --data-root ../shared/data/omniglot

The settings are those of learn2learn's ``examples/vision/maml_omniglot.py``: 5-way 1-shot, one
query per class, the fully connected ``OmniglotFC`` (784-256-128-64-64, batch norm, truncated
normal init; rebuilt here because ``learn2learn.vision`` needs torchvision), ``l2l.algorithms.MAML``
second order with ``lr=0.5``, Adam 0.003, meta-batch 32, one adaptation step, a ``clone()`` and
``backward()`` per task. Two departures, both in learn2learn's favour or neutral: the tasks come
from mamlkit's Omniglot loader (the same classes, rotations and 28 x 28 images as mamlkit's
presets; learn2learn's loader needs torchvision and a download), and the example's per-iteration
meta-validation pass (a second forward per task, for its printout) is replaced by a validation
every ``--val-every`` iterations on 100 held-out tasks with 15 queries per class, measured the
way mamlkit's runs measure ``val_post``, and left out of the times. The budget is CPU time of
this process (``cpu_seconds``, one thread: core-seconds), which a busy machine inflates far less
than wall time (``seconds``, also recorded).

Records go to ``results/omniglot/learn2learn-example-5w1s/metrics.jsonl`` in mamlkit's format
(``iteration``, ``seconds``, ``val_post``, ``val_post_ci95``), which
``omniglot_time_to_accuracy.py`` plots beside mamlkit's runs. A budget of hours does not fit one
sitting, so every validation also writes ``checkpoint.pt`` (weights, Adam state, the task
generator's state, the clocks) and ``--resume`` continues from it exactly where it stopped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import _load_l2l_maml  # noqa: E402

from mamlkit.run.atomic import write_atomic  # noqa: E402
from mamlkit.run.evaluate import mean_ci95  # noqa: E402
from mamlkit.tasks.classification import omniglot_tasks  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "omniglot" / "learn2learn-example-5w1s"
WAYS, SHOTS, FAST_LR, META_LR, META_BATCH = 5, 1, 0.5, 0.003, 32


def linear_block(inputs: int, outputs: int) -> nn.Sequential:
    """learn2learn's ``LinearBlock``: linear (truncated normal, std 0.01), batch norm, ReLU."""
    linear = nn.Linear(inputs, outputs)
    nn.init.trunc_normal_(linear.weight, std=0.01, a=-0.02, b=0.02)
    nn.init.zeros_(linear.bias)
    norm = nn.BatchNorm1d(outputs, eps=1e-3, momentum=0.999, track_running_stats=False)
    return nn.Sequential(linear, norm, nn.ReLU())


def omniglot_fc(ways: int, sizes: tuple[int, ...] = (256, 128, 64, 64)) -> nn.Sequential:
    """learn2learn's ``OmniglotFC(28 ** 2, ways)``."""
    widths = (28 * 28, *sizes)
    blocks = [linear_block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    head = nn.Linear(sizes[-1], ways)
    nn.init.trunc_normal_(head.weight, std=0.01, a=-0.02, b=0.02)
    nn.init.zeros_(head.bias)
    return nn.Sequential(nn.Flatten(), *blocks, head)


def adapted_query(maml, support, query, loss_fn):
    """The example's ``fast_adapt``: one step on the support set, then the query predictions."""
    learner = maml.clone()
    learner.adapt(loss_fn(learner(support[0]), support[1]))
    return learner(query[0])


def validate(maml, tasks, loss_fn) -> tuple[float, float]:
    accuracies = []
    for t in range(tasks.support[0].shape[0]):
        support = (tasks.support[0][t], tasks.support[1][t])
        query = (tasks.query[0][t], tasks.query[1][t])
        predictions = adapted_query(maml, support, query, loss_fn).detach()
        accuracies.append((predictions.argmax(-1) == query[1]).float().mean().item())
    summary = mean_ci95(torch.tensor(accuracies))
    return summary["mean"], summary["ci95"]


def save_checkpoint(path, maml, optimizer, generator, seconds, cpu_seconds, iteration) -> None:
    """Everything the loop carries from one iteration to the next, written in one step."""
    buffer = io.BytesIO()
    torch.save({"model": maml.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "seconds": seconds,
                "cpu_seconds": cpu_seconds, "iteration": iteration}, buffer)
    write_atomic(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, required=True, help="budget, CPU hours of training")
    parser.add_argument("--data-root", default="../shared/data/omniglot")
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--max-iterations", type=int, default=None,
                        help="stop here even if the budget is not spent")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt (written at every validation)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = omniglot_tasks(args.data_root, WAYS, SHOTS, SHOTS, split="train")
    held_out = omniglot_tasks(args.data_root, WAYS, SHOTS, 15, split="test").sample(
        100, torch.Generator().manual_seed(1))
    maml = _load_l2l_maml()(omniglot_fc(WAYS), lr=FAST_LR, first_order=False)
    optimizer = torch.optim.Adam(maml.parameters(), META_LR)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    training_seconds, cpu_seconds, iteration = 0.0, 0.0, 0
    if args.resume:
        state = torch.load(args.out / "checkpoint.pt", weights_only=False)
        maml.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        training_seconds, cpu_seconds, iteration = (
            state["seconds"], state["cpu_seconds"], state["iteration"])
        kept = [line for line in (args.out / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["iteration"] <= iteration]  # records after the checkpoint go
        write_atomic(args.out / "metrics.jsonl", "".join(line + "\n" for line in kept))
    metrics = (args.out / "metrics.jsonl").open("a" if args.resume else "w")
    while cpu_seconds < args.hours * 3600 and iteration < (args.max_iterations or sys.maxsize):
        began, cpu_began = time.perf_counter(), time.process_time()
        batch = train.sample(META_BATCH, generator)
        optimizer.zero_grad()
        for t in range(META_BATCH):
            support = (batch.support[0][t], batch.support[1][t])
            query = (batch.query[0][t], batch.query[1][t])
            loss_fn(adapted_query(maml, support, query, loss_fn), query[1]).backward()
        for p in maml.parameters():
            p.grad.mul_(1.0 / META_BATCH)
        optimizer.step()
        training_seconds += time.perf_counter() - began
        cpu_seconds += time.process_time() - cpu_began
        iteration += 1
        if iteration % args.val_every == 0:
            accuracy, ci95 = validate(maml, held_out, loss_fn)
            record = {"iteration": iteration, "seconds": round(training_seconds, 3),
                      "cpu_seconds": round(cpu_seconds, 3), "val_post": accuracy,
                      "val_post_ci95": ci95}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            save_checkpoint(args.out / "checkpoint.pt", maml, optimizer, generator,
                            training_seconds, cpu_seconds, iteration)
            print(record, flush=True)
    metrics.close()
    (args.out / "README.md").write_text(
        f"learn2learn's Omniglot MAML example (`benchmarks/omniglot_learn2learn.py`): "
        f"{iteration:,} iterations in {cpu_seconds / 3600:.2f} CPU hours of training "
        f"({training_seconds / 3600:.2f} h wall) on {args.threads} thread(s), load average "
        f"{os.getloadavg()[0]:.1f} at the end.\n")


if __name__ == "__main__":
    main()
