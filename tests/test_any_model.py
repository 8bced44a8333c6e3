"""Any nn.Module: stock batch norm, losses left out, shapes that would silently broadcast."""

import copy
import logging
import os
from pathlib import Path

import pytest
import torch
from reference import meta_grad, plain_meta_loss
from torch import nn

from mamlkit import MAML, TaskBatch
from mamlkit import functional as MF
from mamlkit.models import TaskBatchNorm

ROOT = Path(os.environ.get("MAMLKIT_OMNIGLOT_ROOT",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))
HAVE_DATA = (ROOT / "images_background.zip").is_file()


def stock_net(ways=3, channels=4):
    """A torchvision-style network: default nn.BatchNorm2d (running statistics on)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, ways)).double()


def image_batch(tasks=3, ways=3, shots=2, queries=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    def labels(k):
        return torch.arange(ways).repeat_interleave(k).expand(tasks, -1).clone()
    return TaskBatch(
        (torch.randn(tasks, ways * shots, 1, 8, 8, generator=g, dtype=torch.float64),
         labels(shots)),
        (torch.randn(tasks, ways * queries, 1, 8, 8, generator=g, dtype=torch.float64),
         labels(queries)))


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("path", ["loop", "vmap", "checkpointed"])
def test_stock_batch_norm_meta_gradient_equals_the_plain_loop(steps, first_order, path):
    """The independent reference runs the untouched stock model with plain autograd."""
    model = stock_net()
    reference = copy.deepcopy(model)
    batch = image_batch()
    learner = MAML(model, 0.1, steps, first_order, batching="vmap" if path == "vmap" else "loop",
                   checkpoint_inner=path == "checkpointed")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    ours = meta_grad(learner.meta_loss(batch), model)
    theirs = meta_grad(plain_meta_loss(reference, batch, MF.cross_entropy, 0.1, steps,
                                       first_order), reference)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_stock_batch_norm_is_announced_and_keeps_meaningful_running_statistics(caplog):
    model = stock_net()
    with caplog.at_level(logging.WARNING, logger="mamlkit"):
        learner = MAML(model, 0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "mamlkit"]
    assert len(lines) == 1 and "2 nn.BatchNorm layer(s) of Sequential" in lines[0]
    layer = model[1]
    assert isinstance(layer, TaskBatchNorm) and layer.track_running_stats
    batch = image_batch()
    learner.meta_loss(batch).backward()  # no "mutate a captured Tensor" inside the transform
    assert layer.num_batches_tracked.item() == batch.num_tasks  # once per task, outside
    # the running statistics are theta's on the support inputs, as stock batch norm would keep
    stock = stock_net()
    stock.train()
    with torch.no_grad():
        for x in batch.support[0]:
            stock(x)
    torch.testing.assert_close(layer.running_mean, stock[1].running_mean)
    torch.testing.assert_close(layer.running_var, stock[1].running_var)
    model.eval()
    x = batch.query[0][0]
    torch.testing.assert_close(model(x), stock.eval()(x))


def test_stock_batch_norm_keeps_the_users_parameter_and_buffer_objects():
    """An optimizer built from model.parameters() before wrapping still trains batch norm."""
    model = stock_net()
    before = {name: id(p) for name, p in model.named_parameters()}
    buffers = {name: id(b) for name, b in model.named_buffers()}
    weight = model[1].weight
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    learner = MAML(model, 0.1)
    assert isinstance(model[1], TaskBatchNorm)
    assert {name: id(p) for name, p in learner.model.named_parameters()} == before
    assert {name: id(b) for name, b in learner.model.named_buffers()} == buffers
    assert learner.params()["1.weight"] is weight
    start = weight.detach().clone()
    optimizer.zero_grad()
    learner.meta_loss(image_batch()).backward()
    optimizer.step()
    assert weight.grad is not None and not torch.equal(weight.detach(), start)
    assert learner.model[1].weight is weight
    assert weight.dtype == torch.float64  # the user's dtype and device, not the layer's default


def test_stock_batch_norm_without_affine_keeps_its_running_statistics_dtype():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, affine=False)).double()
    mean = model[1].running_mean
    MAML(model, 0.1, loss_fn="mse")
    assert model[1].running_mean is mean and mean.dtype == torch.float64

def test_a_left_out_loss_follows_the_targets():
    classifier = MAML(stock_net(), 0.1)  # integer labels -> cross-entropy
    batch = image_batch()
    expected = MAML(stock_net(), 0.1, loss_fn="cross_entropy").meta_loss(batch)
    torch.testing.assert_close(classifier.meta_loss(batch), expected)
    torch.manual_seed(1)
    regressor = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    data = TaskBatch((torch.randn(2, 5, 1).double(), torch.randn(2, 5, 1).double()),
                     (torch.randn(2, 5, 1).double(), torch.randn(2, 5, 1).double()))
    torch.testing.assert_close(MAML(regressor, 0.1).meta_loss(data),
                               MAML(regressor, 0.1, loss_fn="mse").meta_loss(data))


def test_shapes_that_would_broadcast_stop_with_one_sentence():
    torch.manual_seed(1)
    regressor = nn.Linear(1, 1)
    flat_targets = TaskBatch((torch.randn(2, 5, 1), torch.randn(2, 5)),
                             (torch.randn(2, 5, 1), torch.randn(2, 5)))
    with pytest.raises(ValueError, match=r"prediction has shape \[5, 1\] but the target \[5\]"):
        MAML(regressor, 0.1).meta_loss(flat_targets)
    wrong_labels = TaskBatch((torch.randn(2, 6, 4), torch.zeros(2, 6, 1, dtype=torch.long)),
                             (torch.randn(2, 6, 4), torch.zeros(2, 6, 1, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"logits have shape \[6, 3\] but the labels \[6, 1\]"):
        MAML(nn.Linear(4, 3), 0.1).meta_loss(wrong_labels)
    with pytest.raises(ValueError, match="x holds 5 examples per task and y 4"):
        TaskBatch((torch.randn(2, 5, 1), torch.randn(2, 4, 1)),
                  (torch.randn(2, 5, 1), torch.randn(2, 5, 1)))



def test_float_class_labels_are_told_to_be_integers_not_reshaped():
    """The labels' shape is right; their dtype is not (or, as floats, they must be class
    probabilities shaped like the logits)."""
    logits, labels = torch.randn(10, 5), torch.randint(0, 5, (10,))
    with pytest.raises(ValueError, match=r"float32 labels of shape \[10\].*class indices must "
                                         r"be integers \(labels\.long\(\)\)") as error:
        MF.cross_entropy(logits, labels.float())
    assert "float class probabilities of shape [10, 5]" in str(error.value)
    with pytest.raises(ValueError, match=r"integer class indices of shape \[10\] or float class "
                                         r"probabilities of shape \[10, 5\]"):
        MF.cross_entropy(logits, torch.rand(10, 3))
    probabilities = torch.softmax(torch.randn(10, 5), dim=-1)  # still accepted
    torch.testing.assert_close(MF.cross_entropy(logits, probabilities),
                               nn.functional.cross_entropy(logits, probabilities))
    learner = MAML(nn.Linear(4, 5), 0.1)  # loss left out: float targets would mean MSE
    with pytest.raises(ValueError, match=r"look like class labels.*labels\.long\(\)"):
        learner.adapt(torch.randn(10, 4), labels.float())


def test_a_bare_tensor_where_an_x_y_pair_belongs_is_one_sentence():
    x, y = torch.randn(4, 10, 3), torch.randint(0, 5, (4, 10))
    with pytest.raises(ValueError, match=r"^TaskBatch support must be an \(x, y\) pair like "
                                         r"query; got a tensor of shape \[4, 10, 3\]\.$"):
        TaskBatch(support=x, query=(x, y))
    with pytest.raises(ValueError, match=r"^TaskBatch query must be an \(x, y\) pair"):
        TaskBatch(support=(x, y), query=x)
    learner = MAML(nn.Sequential(nn.Linear(3, 5)), 0.1)
    pair = r"needs each task's data as an \(x, y\) pair: .*; got a tensor\.$"
    two_shots = torch.randn(4, 2, 3)  # would unpack into x = row 0, y = row 1 silently
    for batching in ("vmap", "loop", "stacked"):
        learner.batching = MAML(learner.model, 0.1, batching=batching).batching
        with pytest.raises(ValueError, match=pair):
            learner.meta_loss(TaskBatch(support=two_shots, query=two_shots))
    with pytest.raises(ValueError, match=pair):
        learner.adapt(two_shots[0])  # y left out


class TwoInputs(nn.Module):
    """A model whose input x is a dict of tensors."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 1), nn.Linear(2, 1)

    def forward(self, x):
        return self.a(x["a"]) + self.b(x["b"])


def test_an_x_that_is_not_a_tensor_is_still_an_x_y_pair():
    x, y = {"a": torch.randn(4, 5, 3), "b": torch.randn(4, 5, 2)}, torch.randn(4, 5, 1)
    loss = MAML(TwoInputs(), 0.1, batching="loop").meta_loss(TaskBatch((x, y), (x, y)))
    assert torch.isfinite(loss)

@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DATA, reason=f"real Omniglot zips not found in {ROOT}")
def test_a_stock_network_meta_trains_on_omniglot_from_python(tmp_path, monkeypatch):
    from mamlkit.tasks import omniglot_tasks

    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    tasks = omniglot_tasks(ROOT, ways=5, shots=1, query_shots=5)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 7 * 7, 5))
    learner = MAML(net, inner_lr=0.4)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    curve_before = learner.adaptation_curve(tasks.sample(20, generator), [0, 1], "accuracy")
    for _ in range(40):
        optimizer.zero_grad()
        learner.meta_loss(tasks.sample(4, generator)).backward()
        optimizer.step()
    curve = learner.adaptation_curve(tasks.sample(40, generator), [0, 1], "accuracy")
    assert curve[1].mean() > curve_before[1].mean() + 0.15


class Recurrent(nn.Module):
    """A sequence regressor with a stock LSTM (no vmap batching rule) after dropout."""

    def __init__(self):
        super().__init__()
        self.drop, self.rnn, self.head = nn.Dropout(0.2), nn.LSTM(3, 6, batch_first=True), \
            nn.Linear(6, 1)

    def forward(self, x):
        out, _ = self.rnn(self.drop(x))
        return self.head(out[:, -1])


def sequence_batch(tasks=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    def side():
        return torch.randn(tasks, 4, 5, 3, generator=g), torch.randn(tasks, 4, 1, generator=g)
    return TaskBatch(side(), side())


def test_an_lstm_meta_trains_with_auto_batching_as_the_loop_does(caplog, monkeypatch):
    """auto finds at the first meta-step that vmap cannot batch the LSTM, says so once, and
    loops from then on: the same parameters as batching='loop', dropout's draws included."""
    torch.manual_seed(0)
    model = Recurrent()
    vmaps = []
    real_vmap = torch.func.vmap
    monkeypatch.setattr(torch.func, "vmap", lambda *a, **k: vmaps.append(1) or real_vmap(*a, **k))
    trained = []
    for batching in ("auto", "loop"):
        learner = MAML(copy.deepcopy(model), inner_lr=0.1, batching=batching)
        optimizer = torch.optim.Adam(learner.parameters(), lr=0.01)
        torch.manual_seed(1)
        with caplog.at_level(logging.WARNING, logger="mamlkit"):
            for step in range(3):
                optimizer.zero_grad()
                learner.meta_loss(sequence_batch(seed=step)).backward()
                optimizer.step()
        trained.append(learner.state_dict())
    for name, value in trained[0].items():
        assert torch.equal(value, trained[1][name]), name
    assert len(vmaps) == 1  # tried once, remembered
    said = [r.getMessage() for r in caplog.records if "vmap" in r.getMessage()]
    assert len(said) == 1 and "layer 'rnn' (LSTM)" in said[0] and "aten::lstm" in said[0], said


class Gated(nn.Module):
    """``forward(x, aux)``: two inputs; stacks tasks itself (``[T, ...]`` parameters and
    ``[T, N, ...]`` inputs broadcast through the matrix products)."""

    supports_task_stacking = True

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(2, 2))
        self.out = nn.Parameter(torch.randn(2, 1))

    def forward(self, x, aux):
        return (torch.tanh(x @ self.a) * (aux @ self.b)) @ self.out


def two_input_batch(as_dict=False, tasks=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    def side():
        x, aux = (torch.randn(tasks, 5, n, generator=g, dtype=torch.float64) for n in (3, 2))
        y = torch.randn(tasks, 5, 1, generator=g, dtype=torch.float64)
        return ({"x": x, "aux": aux} if as_dict else (x, aux)), y
    return TaskBatch(side(), side())


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_model_of_two_inputs_takes_a_tuple_or_dict_x_on_every_path(as_dict):
    """x = (x, aux) is passed as positional arguments, {"x": .., "aux": ..} as keyword ones."""
    torch.manual_seed(0)
    model = Gated().double()
    batch = two_input_batch(as_dict)
    grads = {}
    for batching in ("auto", "vmap", "loop", "stacked"):
        learner = MAML(copy.deepcopy(model), inner_lr=0.1, inner_steps=2, batching=batching)
        learner.meta_loss(batch).backward()
        grads[batching] = [p.grad for p in learner.parameters()]
    for batching, found in grads.items():
        for g, expected in zip(found, grads["loop"], strict=True):
            torch.testing.assert_close(g, expected, msg=batching)
    learner = MAML(model, inner_lr=0.1)
    (x, y), _ = batch.support, None
    one = {k: v[0] for k, v in x.items()} if as_dict else tuple(v[0] for v in x)
    adapted = learner.adapt(one, y[0])
    assert learner(one, adapted).shape == learner(one).shape == (5, 1)


class Mixed(nn.Module):
    """``forward(x, aux)`` of standard layers, stacked by nobody."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(3, 4), nn.Linear(2, 4), nn.Linear(4, 1)

    def forward(self, x, aux):
        return self.out(torch.relu(self.a(x) + self.b(aux)))


def test_a_model_of_two_inputs_of_standard_layers_runs_batched_and_says_why_not_stacked():
    torch.manual_seed(0)
    model, batch = Mixed().double(), two_input_batch()
    grads = {}
    for batching in ("auto", "vmap", "loop"):
        learner = MAML(copy.deepcopy(model), inner_lr=0.1, batching=batching)
        learner.meta_loss(batch).backward()
        grads[batching] = [p.grad for p in learner.parameters()]
    assert MAML(model, 0.1).batching.kind == "vmap"
    for batching in ("auto", "vmap"):
        for g, expected in zip(grads[batching], grads["loop"], strict=True):
            torch.testing.assert_close(g, expected)
    with pytest.raises(ValueError, match=r"forward's second input 'aux'.*; choose auto, vmap or "
                                         r"loop\.$"):
        MAML(model, 0.1, batching="stacked")


def test_the_inputs_of_a_model_of_two_inputs_are_checked_against_the_targets():
    x, aux, y = torch.randn(4, 5, 3), torch.randn(4, 6, 2), torch.randn(4, 5, 1)
    with pytest.raises(ValueError, match=r"^TaskBatch support x\[1\] has shape \[4, 6, 2\] but y "
                                         r"\[4, 5, 1\]"):
        TaskBatch(((x, aux), y), ((x, aux), y))
    with pytest.raises(ValueError, match=r"^TaskBatch query x\['aux'\] has shape"):
        TaskBatch(((x, x), y), ({"x": x, "aux": aux}, y))
