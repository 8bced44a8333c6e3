"""The pretrained baseline of few-shot classification: global labels, the training objective,
the three evaluations (linear head, fine-tune, nearest mean), the run end to end."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_own_data import colour_folder

from mamlkit.algorithms import Pretrained
from mamlkit.cli import main
from mamlkit.data import ClassImages
from mamlkit.functional import heads
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.models import Conv4
from mamlkit.run import checkpoint
from mamlkit.run.compare import compare_rows
from mamlkit.run.config import ConfigError, applicable_keys, resolve, save
from mamlkit.run.loop import train
from mamlkit.tasks import ClassificationTasks
from mamlkit.tasks.global_labels import sample_global

FAST = {"iterations": 6, "meta_batch_size": 2, "log_every": 3, "val_every": 6, "val_tasks": 4,
        "checkpoint_every": 3, "eval_tasks": 10, "hidden": [8], "image_size": 8,
        "query_shots": 2, "algorithm": "pretrained", "head_steps": 20}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))


def separable_features(tasks=3, ways=4, per_class=2, dim=6, seed=0):
    """Unit features near one axis per class: every task linearly separable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1).contiguous()
    axes = torch.eye(dim)[torch.randperm(dim, generator=g)[:ways]]
    x = axes[labels] + 0.1 * torch.randn(tasks, ways * per_class, dim, generator=g)
    return heads.normalise(x), labels


def test_head_fit_reaches_the_regularised_optimum_on_separable_features():
    x, y = separable_features()
    weight, bias = heads.fit_logistic_head(x, y, ways=4, weight_decay=1e-2, steps=200)
    logits = heads.head_logits(x, weight, bias)
    assert torch.equal(logits.argmax(-1), y)  # separates the support set
    # stationary point of the strictly convex objective: its gradient vanishes there
    w, b = weight.double().requires_grad_(), bias.double().requires_grad_()
    grads = torch.autograd.grad(
        heads.logistic_objective(w, b, x.double(), y, 1e-2).sum(), [w, b])
    assert max(g.abs().max().item() for g in grads) < 1e-5
    zero = torch.zeros_like(w).requires_grad_()
    at_zero = torch.autograd.grad(heads.logistic_objective(
        zero, torch.zeros_like(b), x.double(), y, 1e-2).sum(), zero)[0]
    assert at_zero.abs().max() > 1e-2  # the starting point is far from it
    # each task is fit on its own: alone, task 1 gets the same head
    alone_w, alone_b = heads.fit_logistic_head(x[1:2], y[1:2], 4, 1e-2, 200)
    assert torch.allclose(alone_w[0], weight[1], atol=1e-4)
    assert torch.allclose(alone_b[0], bias[1], atol=1e-4)


def test_nearest_mean_by_hand():
    support = torch.tensor([[[3.0, 4.0], [0.0, 2.0], [5.0, 0.0], [2.0, 0.0]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    query = torch.tensor([[[1.0, 1.0], [1.0, -1.0]]])
    logits = heads.nearest_mean_logits(support, labels, query, ways=2)
    # unit supports: (0.6, 0.8), (0, 1) | (1, 0), (1, 0); means (0.3, 0.9) | (1, 0)
    mean0 = torch.tensor([0.3, 0.9]) / (0.9**0.5)
    q = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / 2**0.5
    expected = torch.stack([q @ mean0, q[:, 0]], dim=-1)
    assert torch.allclose(logits[0], expected, atol=1e-6)
    assert torch.allclose(expected[0], torch.tensor([2 / 5**0.5, 0.5**0.5]), atol=1e-6)
    assert heads.predicted_accuracy(logits, torch.tensor([[0, 1]])).item() == 1.0


def _learner(ways=3, classes=7, batching="auto"):
    torch.manual_seed(1)
    model = Conv4(ways=ways, in_channels=1, hidden=4, image_size=8, max_pool=True)
    return Pretrained(model, classes, inner_lr=0.3, inner_steps=1, batching=batching)


def _batch(tasks=2, ways=3, shots=2, queries=3, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch((torch.rand(tasks, ways * shots, 1, 8, 8, generator=g), sy),
                     (torch.rand(tasks, ways * queries, 1, 8, 8, generator=g), qy))


@pytest.mark.parametrize("batching", ["loop", "stacked"])
def test_fine_tune_equals_plain_sgd_from_a_zero_head(batching):
    learner = _learner(batching=batching)
    with torch.no_grad():  # a trained-looking backbone: not the initial one
        for p in learner.model.features.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert learner.model.head.weight.abs().sum() == 0 == learner.model.head.bias.abs().sum()
    batch, lr, steps = _batch(), 0.3, [0, 1, 3]
    curve = learner.adaptation_curve(batch, steps, "cross_entropy", inner_lr=lr)
    for t in range(batch.num_tasks):
        model = copy.deepcopy(learner.model)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        (sx, sy), (qx, qy) = (batch.support[0][t], batch.support[1][t]), \
            (batch.query[0][t], batch.query[1][t])
        expected = []
        for k in range(max(steps) + 1):
            if k in steps:
                with torch.no_grad():
                    expected.append(F.cross_entropy(model(qx), qy))
            optimizer.zero_grad()
            F.cross_entropy(model(sx), sy).backward()
            optimizer.step()
        assert torch.allclose(curve[:, t], torch.stack(expected), atol=1e-5)
    assert torch.allclose(curve[0], torch.full((2,), torch.log(torch.tensor(3.0)).item()))


def test_pretrain_loss_and_gradient_equal_a_plain_classifier():
    learner, batch = _learner(), _batch()
    batch = TaskBatch((batch.support[0], batch.support[1] + 2),
                      (batch.query[0], batch.query[1] * 2))  # global ids in 0..6
    loss = learner.pretrain_loss(batch)
    params = learner.training_parameters()
    grads = torch.autograd.grad(loss, params)
    classifier = copy.deepcopy(learner.model)
    classifier.head = copy.deepcopy(learner.global_head)  # the same network, 7 outputs
    total, count = 0.0, 0
    for (x, y) in (batch.support, batch.query):
        for t in range(batch.num_tasks):  # each set its own batch, as in MAML
            total = total + F.cross_entropy(classifier(x[t]), y[t], reduction="sum")
            count += y[t].numel()
    reference = total / count
    mine = [p for n, p in classifier.named_parameters()]
    expected = torch.autograd.grad(reference, mine)
    assert torch.allclose(loss, reference, atol=1e-6)
    assert len(grads) == len(expected)
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)


def test_frozen_features_are_the_network_up_to_its_head():
    learner, batch = _learner(), _batch()
    support, query = learner.features(batch)
    for t in range(batch.num_tasks):
        expected = learner.model.features(batch.query[0][t]).flatten(1)
        assert torch.allclose(query[t], expected, atol=1e-6)
    assert support.shape == (2, 6, learner.global_head.in_features)
    accuracy = learner.frozen_accuracy(batch)
    assert set(accuracy) == {"linear head", "nearest mean"}
    assert all(a.shape == (2,) and ((a >= 0) & (a <= 1)).all() for a in accuracy.values())


def test_global_labels_name_each_image_class():
    images = torch.arange(6).repeat_interleave(4).to(torch.uint8).view(24, 1, 1).expand(
        24, 2, 2).contiguous() * 40  # every image of class c is the constant 40 c
    data = ClassImages(images, torch.arange(6).repeat_interleave(4), tuple("abcdef"))
    tasks = ClassificationTasks(data, ways=3, shots=1, query_shots=2, classes=[1, 2, 4, 5])
    batch = sample_global(tasks, 5, torch.Generator().manual_seed(3))
    plain = tasks.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(batch.support[0], plain.support[0])  # the same draws as MAML's
    for x, y in (batch.support, batch.query):
        shown = (x[..., 0, 0, 0] * 255 / 40).round().long()
        assert torch.equal(tasks.base_classes[y], shown)


def test_config_switch_and_applicable_keys(tmp_path):
    config = resolve("omniglot-5w1s-quick", {"algorithm": "pretrained"})
    keys = set(applicable_keys(config))
    assert {"head_steps", "head_weight_decay", "inner_lr", "meta_lr"} <= keys
    assert not {"first_order", "checkpoint_inner", "compile"} & keys
    assert "head_steps" not in applicable_keys(resolve("omniglot-5w1s-quick", {}))
    with pytest.raises(ConfigError, match="algorithm pretrained"):
        resolve("sinusoid", {"algorithm": "pretrained"})


def test_train_and_eval_write_the_three_baseline_rows(tmp_path, capsys):
    data = colour_folder(tmp_path / "images", classes=30, per_class=4, size=8)
    run = tmp_path / "run"
    sets = [f"{k}={json.dumps(v)}" for k, v in FAST.items()]
    args = [arg for pair in sets for arg in ("--set", pair)]
    assert main(["train", "folder-5w1s", "--data-root", str(data), "--out", str(run),
                 *args, "--no-progress"]) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_global_accuracy", "val_pre", "val_post", "val_linear_head",
            "val_nearest_mean"} <= set(record)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert "run: linear head" in capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert result["num_tasks"] == 10 and result["steps"]["0"]["mean"] == pytest.approx(0.2)
    assert set(result["baselines"]) == {"linear head", "nearest mean"}
    for row in result["baselines"].values():
        assert set(row["steps"]) == set(result["steps"]) - {"0"}
        assert 0 <= row["steps"]["1"]["mean"] <= 1
    assert main(["compare", str(run)]) == 0
    table = capsys.readouterr().out
    for row in ("run: fine-tune", "run: linear head", "run: nearest mean"):
        assert f"| {row} | 10 | 6 |" in table


def test_resume_after_a_kill_is_bit_exact(tmp_path):
    data = colour_folder(tmp_path / "images", classes=30, per_class=4, size=8)
    config = resolve("folder-5w1s", {**FAST, "data_root": str(data), "iterations": 8,
                                     "checkpoint_every": 4, "log_every": 2, "val_every": 4})
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "killed", progress=False, stop_after=6)
    assert checkpoint.latest(tmp_path / "killed").name == "step_00000004"
    train(config, tmp_path / "killed", resume=True, progress=False)
    whole, resumed = (load_file(checkpoint.latest(tmp_path / run) / "model.safetensors")
                      for run in ("whole", "killed"))
    assert set(whole) == set(resumed) and "global_head.weight" in whole
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    first = load_file(tmp_path / "killed" / "checkpoints" / "step_00000004" / "model.safetensors")
    assert not torch.equal(first["global_head.weight"], resumed["global_head.weight"])
    lines = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text()
             .splitlines()]
    assert [r["iteration"] for r in lines] == [2, 4, 6, 8]


def test_compare_averages_each_baseline_row_over_seeds(tmp_path):
    def cell(mean):
        return {"mean": mean, "ci95": 0.01}

    runs = []
    for seed, (fine, head, mean) in enumerate([(0.5, 0.8, 0.7), (0.7, 0.9, 0.8)]):
        run = tmp_path / f"pre-seed{seed}"
        run.mkdir()
        save(resolve("omniglot-5w1s-quick", {"algorithm": "pretrained", "seed": seed}),
             run / "config.yaml")
        base = {"metric": "accuracy", "num_tasks": 600, "inner_lr": 0.4, "iteration": 9}
        frozen = {**base, "inner_lr": "frozen"}
        (run / "eval.json").write_text(json.dumps({
            **base, "steps": {"0": cell(0.2), "1": cell(fine)},
            "baselines": {"linear head": {**frozen, "steps": {"1": cell(head)}},
                          "nearest mean": {**frozen, "steps": {"1": cell(mean)}}}}))
        runs.append(run)
    _, rows = compare_rows(runs)
    assert [(r.label, r.seeds) for r in rows] == [("pre (2 seeds): fine-tune", 2),
                                                  ("pre (2 seeds): linear head", 2),
                                                  ("pre (2 seeds): nearest mean", 2)]
    assert [round(r.cells["1"][0], 6) for r in rows] == [60.0, 85.0, 75.0]
    assert "0" not in rows[1].cells and rows[0].cells["0"][0] == pytest.approx(20.0)
