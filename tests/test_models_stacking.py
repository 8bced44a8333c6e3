"""Task stacking for any model of standard layers (models/stacking.py) against the plain loop."""

import copy
import logging
import re

import pytest
import torch
import torch.nn.functional as F
from reference import meta_grad, plain_meta_loss
from torch import nn

from mamlkit import MAML, TaskBatch
from mamlkit import functional as MF
from mamlkit.algorithms import ANIL, IMAML, MAMLpp, MetaSGD, Reptile
from mamlkit.functional import Batching
from mamlkit.models import (
    Conv4,
    ResNet12,
    Unstackable,
    compile_stacking,
    exact_batch_norm,
    stacked_forward,
    stacking_problem,
)

D = torch.float64


def conv4_sequential(ways=3, hidden=6):
    """(a) A user's conv4 as nn.Sequential with stock nn.BatchNorm2d (running stats on)."""
    layers, channels = [], 1
    for _ in range(4):
        layers += [nn.Conv2d(channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels = hidden
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(hidden, ways))


class Block(nn.Module):
    """A residual block: two convs, a skip (identity or 1x1 conv), leaky ReLU after the sum."""

    def __init__(self, c_in, c_out, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = norm(c_out)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out += self.skip(x)
        return self.act(out)


class ResidualNet(nn.Module):
    """(b) Two residual blocks (group norm, stock batch norm), a concatenated branch, average
    pooling, ``torch.flatten`` and ``F.relu`` as functions, a linear head."""

    def __init__(self, ways=3, channels=4):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.block1 = Block(channels, channels, lambda c: nn.GroupNorm(2, c))
        self.block2 = Block(2 * channels, 6, nn.BatchNorm2d)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, ways)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([self.block1(x), x], dim=1)
        return self.head(torch.flatten(self.pool(self.block2(x)), 1))


def conv1d_net(ways=3):
    """(c) A time-series classifier: Conv1d with stride, dilation and groups, batch norm."""
    return nn.Sequential(
        nn.Conv1d(2, 6, 5, padding=2), nn.BatchNorm1d(6), nn.ELU(), nn.MaxPool1d(2),
        nn.Conv1d(6, 6, 3, stride=2, dilation=2, padding=2, groups=2), nn.BatchNorm1d(6),
        nn.SiLU(), nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(12, ways))


def layer_norm_mlp():
    """(d) An MLP with LayerNorm and Dropout(p=0), a regressor."""
    return nn.Sequential(nn.Linear(3, 16), nn.LayerNorm(16), nn.GELU(), nn.Dropout(0.0),
                         nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))


def classification(tasks, shape, ways=3, support=1, query=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def labels(k):
        return torch.arange(ways).repeat(k).expand(tasks, -1).clone()

    return TaskBatch((torch.randn(tasks, ways * support, *shape, generator=g, dtype=D),
                      labels(support)),
                     (torch.randn(tasks, ways * query, *shape, generator=g, dtype=D),
                      labels(query)))


def regression(tasks, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(*[(torch.randn(tasks, n, 3, generator=g, dtype=D),
                        torch.randn(tasks, n, 2, generator=g, dtype=D)) for n in (4, 7)])


MODELS = {
    "conv4-sequential": (conv4_sequential, lambda: classification(5, (1, 16, 16)), "cross_entropy"),
    "residual": (ResidualNet, lambda: classification(5, (1, 12, 12)), "cross_entropy"),
    "conv1d": (conv1d_net, lambda: classification(5, (2, 20)), "cross_entropy"),
    "layer-norm-mlp": (layer_norm_mlp, lambda: regression(5), "mse"),
}


def fresh(name, seed=0):
    torch.manual_seed(seed)
    return MODELS[name][0]().to(D)


def assert_exact(ours, ref, tol=1e-10):
    scale = max(1.0, max(g.abs().max().item() for g in ref))
    for a, b in zip(ours, ref, strict=True):
        assert (a - b).abs().max().item() <= tol * scale


@pytest.mark.parametrize("chunk_size", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_stacked_meta_gradient_equals_the_plain_loop_in_float64(name, steps, first_order,
                                                                 chunk_size):
    """5 tasks in chunks of 1 or 3 (uneven); the reference runs the untouched model."""
    model = fresh(name)
    reference = copy.deepcopy(model)
    _, make_batch, loss = MODELS[name]
    batch = make_batch()
    learner = MAML(model, 0.3, steps, first_order, loss_fn=loss, batching="stacked",
                   chunk_size=chunk_size)
    assert learner.batching.kind == "stacked" and learner.batching.stacked_forward is not None
    ours = meta_grad(learner.meta_loss(batch), model)
    theirs = meta_grad(plain_meta_loss(reference, batch, MF.resolve_loss(loss), 0.3, steps,
                                       first_order), reference)
    assert_exact(ours, theirs)


def test_auto_stacks_conv_nets_and_keeps_vmap_for_mlps(caplog):
    with caplog.at_level(logging.WARNING, logger="mamlkit"):
        for name in ("conv4-sequential", "residual", "conv1d"):
            batching = MAML(fresh(name), 0.1).batching
            assert batching.kind == "stacked" and batching.stacked_forward is stacked_forward
        assert MAML(fresh("layer-norm-mlp"), 0.1).batching == Batching("vmap")
    assert not [r for r in caplog.records if "task-stacked" in r.getMessage()]
    conv4 = MAML(Conv4(3, hidden=4), 0.1).batching  # the same derived path as any model
    assert conv4 == Batching("stacked") and conv4.stacked_forward is stacked_forward
    assert Batching("stacked", 2, stacked_forward=stacked_forward) == Batching("stacked", 2)
    given = MAML(fresh("conv1d"), 0.1, batching=Batching("stacked", 3)).batching
    assert given.chunk_size == 3 and given.stacked_forward is stacked_forward


class Recurrent(nn.Module):
    """A Conv1d front end feeding an LSTM: no task-stacked form for the LSTM."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        out, _ = self.lstm(self.conv(x).transpose(1, 2))
        return self.head(out[:, -1])


class CumulativeConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)

    def forward(self, x):
        return torch.cumsum(self.conv(x), dim=-1).mean(-1)


@pytest.mark.parametrize("make,culprit", [(Recurrent, "layer 'lstm' (LSTM)"),
                                          (CumulativeConv, "torch.cumsum")])
def test_an_unstackable_model_falls_back_with_one_line_and_refuses_explicit_stacking(
        make, culprit, caplog):
    model = make().to(D)
    with caplog.at_level(logging.WARNING, logger="mamlkit"):
        learner = MAML(model, 0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "mamlkit"]
    assert len(lines) == 1 and culprit in lines[0] and "batching='loop'" in lines[0]
    assert learner.batching == Batching("loop")
    batch = classification(2, (2, 6))
    ref = plain_meta_loss(model, batch, MF.cross_entropy, 0.1, 1)
    torch.testing.assert_close(learner.meta_loss(batch), ref)
    refusal = "does not support batching='stacked': .*" + re.escape(culprit)
    with pytest.raises(ValueError, match=refusal):
        MAML(model, 0.1, batching="stacked")
    with pytest.raises(Unstackable, match=re.escape(culprit)):
        compile_stacking(model)


class TensorIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.register_buffer("keep", torch.tensor([0, 2]))

    def forward(self, x):
        return self.linear(x)[:, self.keep]


class ImplicitSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x):
        return F.softmax(self.linear(x))


@pytest.mark.parametrize("model,reason", [
    (TensorIndex(), "operation operator.getitem with these arguments"),
    (ImplicitSoftmax(), "operation torch.nn.functional.softmax with these arguments"),
    (nn.Sequential(nn.ConvTranspose2d(1, 2, 3)), "layer '0' (ConvTranspose2d)"),
    (nn.Sequential(nn.Conv1d(1, 2, 3), nn.InstanceNorm1d(2, track_running_stats=True)),
     "layer '1' (InstanceNorm1d) tracks running statistics"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.LazyLinear(3)), "'1.weight' is uninitialised"),
])
def test_forms_without_a_stacked_rule_are_refused_when_compiling(model, reason):
    assert reason in stacking_problem(model)


def test_lstm_alone_has_no_log_line_it_has_no_convolution(caplog):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.RNN(4, 2))
    with caplog.at_level(logging.WARNING, logger="mamlkit"):
        MAML(model, 0.1)
    assert not [r for r in caplog.records if "task-stacked" in r.getMessage()]
    assert "layer '2' (RNN)" in stacking_problem(model)


@pytest.mark.parametrize("make", [
    lambda b: MetaSGD(fresh("residual"), 0.1, 2, loss_fn="cross_entropy", batching=b),
    lambda b: ANIL(fresh("residual"), 0.1, 2, loss_fn="cross_entropy", batching=b),
    lambda b: MAMLpp(fresh("residual"), 0.1, 2, loss_fn="cross_entropy", batching=b,
                     msl_iterations=10),
    lambda b: Reptile(fresh("residual"), 0.1, 2, loss_fn="cross_entropy", batching=b),
    lambda b: MAML(fresh("residual"), 0.1, 2, loss_fn="cross_entropy", batching=b,
                   checkpoint_inner=True),
    lambda b: IMAML(fresh("residual"), 0.1, 2, loss_fn="cross_entropy", batching=b),
], ids=["metasgd", "anil", "mamlpp", "reptile", "checkpointed", "imaml"])
def test_every_learner_stacked_equals_its_loop(make):
    """Meta-SGD, ANIL, MAML++ (every switch), Reptile and checkpointed MAML stacked; iMAML
    runs its conjugate gradient in a loop."""
    batch = classification(5, (1, 12, 12))
    results = {}
    for kind in ("auto", "loop"):
        learner = make(kind)
        assert (learner.batching.kind == "stacked") == (kind == "auto")
        learner.set_iteration(1, 10)
        loss = learner.meta_loss(batch)
        loss.backward()  # MAML++ leaves the replaced batch-norm weights without a gradient
        results[kind] = loss, [torch.zeros(()) if p.grad is None else p.grad
                               for p in learner.parameters()]
    torch.testing.assert_close(results["auto"][0], results["loop"][0], atol=1e-12, rtol=0)
    assert_exact(results["auto"][1], results["loop"][1])


def test_adaptation_curve_and_eval_mode_running_statistics_agree_with_the_loop():
    model = fresh("conv4-sequential")
    batch = classification(4, (1, 16, 16))
    stacked = MAML(model, 0.3, 2)
    loop = MAML(model, 0.3, 2, batching="loop")
    stacked.meta_loss(batch)  # fills the running statistics
    for mode in (model.train, model.eval):
        mode()
        for metric in ("accuracy", "cross_entropy"):
            torch.testing.assert_close(stacked.adaptation_curve(batch, [0, 2], metric),
                                       loop.adaptation_curve(batch, [0, 2], metric),
                                       atol=1e-12, rtol=0)


class KitchenSink(nn.Module):
    """Operations written as functions and methods, and a parameter read in forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4).view(4, 1, 1))
        self.prelu = nn.PReLU()
        self.linear = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        h = self.prelu(self.norm(self.conv(x))) * self.scale
        h = F.max_pool2d(h, 2) + h.mean((2, 3), keepdim=True).sigmoid()
        h = h.view(h.size(0), -1)
        out = self.linear(h).softmax(dim=-1) + x.flatten(1).mean(1, keepdim=True)
        return torch.cat([out, out[:, :2] * 2], dim=1).unsqueeze(1).squeeze(1)


@pytest.mark.parametrize("make,shape", [(KitchenSink, (2, 6, 6)),
                                        (lambda: ResNet12(4, 1, (3, 4, 5, 6)), (1, 16, 16))])
def test_stacked_forward_equals_each_tasks_forward(make, shape):
    torch.manual_seed(0)
    model = make().to(D)
    params = {k: torch.stack([v + 0.1 * torch.randn_like(v) for _ in range(3)])
              for k, v in model.named_parameters()}
    x = torch.randn(3, 17, *shape, dtype=D)  # 17 images: the channels-last layout too
    out = stacked_forward(model, params, dict(model.named_buffers()), x)
    for t in range(3):
        own = torch.func.functional_call(model, {k: v[t] for k, v in params.items()}, (x[t],))
        torch.testing.assert_close(out[t], own, atol=1e-12, rtol=0)


@pytest.mark.parametrize("first_order", [False, True])
def test_resnet12_stacks_exactly(first_order):
    torch.manual_seed(0)
    model = ResNet12(3, in_channels=3, channels=(4, 6, 8, 10)).to(D)
    reference = copy.deepcopy(model)
    batch = classification(3, (3, 16, 16), query=6)  # 18 query images: channels-last
    learner = MAML(model, 0.2, 1, first_order)
    assert learner.batching.kind == "stacked"
    ours = meta_grad(learner.meta_loss(batch), model)
    theirs = meta_grad(plain_meta_loss(reference, batch, MF.cross_entropy, 0.2, 1, first_order),
                       reference)
    assert_exact(ours, theirs)


def test_traced_once_and_again_when_a_layer_is_replaced():
    model = conv4_sequential()
    assert "stock batch norm" in stacking_problem(model)
    exact_batch_norm(model)
    first = compile_stacking(model)
    assert compile_stacking(model) is first
    model[2] = nn.Tanh()
    assert compile_stacking(model) is not first


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 2, 5])
def test_chunk_by_chunk_backward_equals_the_whole_graph(chunk_size, first_order):
    """The stacked meta-loss, first or second order, back-propagates each chunk at once (its
    graph freed): value and gradient as with the whole graph kept, scaled by any outer factor,
    and as the plain per-task loop's."""
    model = fresh("residual")
    batch = classification(5, (1, 12, 12))
    learner = MAML(model, 0.3, 2, first_order, batching="stacked", chunk_size=chunk_size)
    assert learner.frees_chunks(2)
    params = learner.params()
    whole = MF.meta_loss(model, params, learner.buffers_dict(), batch, loss=learner.loss_fn,
                         inner=MF.InnerLoop(0.3, 2, first_order), batching=learner.batching)
    chunked = learner.meta_loss(batch)
    torch.testing.assert_close(chunked, whole, atol=1e-13, rtol=0)
    ours = torch.autograd.grad(3 * chunked, list(params.values()))
    assert_exact(ours, torch.autograd.grad(3 * whole, list(params.values())), tol=1e-13)
    loop = plain_meta_loss(model, batch, MF.cross_entropy, 0.3, 2, first_order)
    assert_exact(ours, torch.autograd.grad(3 * loop, list(params.values())), tol=1e-12)
    assert not MetaSGD(model, 0.3, 2, batching="stacked").frees_chunks(2)  # learned rates
    with torch.no_grad():
        assert not learner.frees_chunks(2)


def test_stacked_chunk_defaults_to_two_tasks_for_stock_batch_norm_and_four_otherwise():
    """Stock batch norm keeps more per task: 2 tasks per call keep it near the loop's memory."""
    from mamlkit.functional.batching import STOCK_BATCH_NORM_CHUNK
    from mamlkit.functional.stacked import DEFAULT_CHUNK
    from mamlkit.models import Conv4

    stock = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(5))
    stock(torch.zeros(2, 1, 8, 8))
    assert MAML(stock, inner_lr=0.1).batching.chunk_size == STOCK_BATCH_NORM_CHUNK == 2
    assert MAML(stock, inner_lr=0.1, batching="stacked").batching.chunk_size == 2
    assert MAML(stock, inner_lr=0.1, chunk_size=3).batching.chunk_size == 3
    conv4 = MAML(Conv4(5, hidden=8), inner_lr=0.1).batching
    assert conv4.kind == "stacked" and conv4.chunk_size is None and DEFAULT_CHUNK == 4
