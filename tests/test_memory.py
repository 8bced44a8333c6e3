"""Checkpointing across inner steps, peak-memory reports and the compile switch."""

import mmap
import warnings

import pytest
import torch
from safetensors.torch import load_file

from mamlkit import MAML, Sinusoid, TaskBatch
from mamlkit.models import Conv4, mlp
from mamlkit.run import checkpoint, scale
from mamlkit.run.config import ConfigError, resolve
from mamlkit.run.loop import train
from mamlkit.run.memory import PeakMemory, rss_mb


def _double(batch: TaskBatch) -> TaskBatch:
    cast = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
    return TaskBatch(tuple(map(cast, batch.support)), tuple(map(cast, batch.query)))


def image_tasks(tasks: int, ways: int = 3, shots: int = 1, queries: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone()
    return _double(TaskBatch((torch.rand(tasks, ways * shots, 1, 28, 28, generator=g), sy),
                             (torch.rand(tasks, ways * queries, 1, 28, 28, generator=g), qy)))


def meta_gradient(learner: MAML, batch: TaskBatch) -> list[torch.Tensor]:
    learner.zero_grad()
    learner.meta_loss(batch).backward()
    return [p.grad.clone() for p in learner.parameters()]


def assert_close(a, b, tol=1e-6):
    scale_ = max(x.abs().max().item() for x in a)
    assert max((x - y).abs().max().item() for x, y in zip(a, b, strict=True)) <= tol * scale_


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("batching", ["stacked", "loop"])
def test_checkpointing_gives_the_same_second_order_meta_gradient_conv4(steps, batching):
    torch.manual_seed(0)
    model = Conv4(ways=3, hidden=4).double()
    batch = image_tasks(5)  # chunks of 4 and 1 in the stacked path
    plain = MAML(model, 0.1, steps, False, "cross_entropy", batching)
    checkpointed = MAML(model, 0.1, steps, False, "cross_entropy", batching,
                        checkpoint_inner=True)
    assert_close(meta_gradient(plain, batch), meta_gradient(checkpointed, batch))


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("options", [{"batching": "vmap"}, {"batching": "loop"},
                                     {"batching": "vmap", "chunk_size": 2},
                                     {"batching": "vmap", "adapt_names": ["2.*"]}])
def test_checkpointing_gives_the_same_second_order_meta_gradient_mlp(steps, options):
    torch.manual_seed(0)
    model = mlp([1, 16, 16, 1]).double()
    batch = _double(Sinusoid(5).sample(5, torch.Generator().manual_seed(0)))
    plain = MAML(model, 0.02, steps, False, "mse", **options)
    checkpointed = MAML(model, 0.02, steps, False, "mse", checkpoint_inner=True, **options)
    assert_close(meta_gradient(plain, batch), meta_gradient(checkpointed, batch))


def test_checkpointing_differentiates_learned_step_sizes():
    """Meta-SGD-style rates (tensors that require grad) get the same gradient too."""

    class LearnedRates(MAML):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lr = torch.nn.ParameterList(
                [torch.nn.Parameter(torch.full_like(p, 0.02)) for p in self.model.parameters()])

        def rates(self, inner_lr=None, steps=None):
            return [{n: r for (n, _), r in zip(self.model.named_parameters(), self.lr,
                                               strict=True)}] * self.inner_steps

    torch.manual_seed(0)
    model = mlp([1, 8, 1]).double()
    batch = _double(Sinusoid(5).sample(4, torch.Generator().manual_seed(0)))
    plain = LearnedRates(model, 0.0, 3, False, "mse").double()
    checkpointed = LearnedRates(model, 0.0, 3, False, "mse", checkpoint_inner=True).double()
    checkpointed.load_state_dict(plain.state_dict())
    assert_close(meta_gradient(plain, batch), meta_gradient(checkpointed, batch))


def test_training_with_checkpointing_equals_training_without(tmp_path):
    base = {"iterations": 4, "meta_batch_size": 4, "shots": 5, "inner_steps": 2,
            "checkpoint_every": 4, "log_every": 2, "val_every": 4, "val_tasks": 4}
    for name, extra in (("plain", {}), ("ckpt", {"checkpoint_inner": True})):
        train(resolve("sinusoid", {**base, **extra}), tmp_path / name, progress=False)
    a, b = (load_file(checkpoint.latest(tmp_path / n) / "model.safetensors")
            for n in ("plain", "ckpt"))
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_checkpointing_is_refused_for_learners_with_their_own_meta_loss():
    class OwnLoss(MAML):
        def meta_loss(self, batch, steps=None):
            return super().meta_loss(batch, steps)

    with pytest.raises(ConfigError, match="checkpoint_inner"):
        scale.meta_loss_fn(OwnLoss(mlp([1, 4, 1]), 0.01), checkpoint_inner=True)


def test_peak_memory_sees_a_large_allocation_and_resets():
    peak = PeakMemory(torch.device("cpu"))
    if peak.resettable:  # from the current resident set, not an earlier test's high-water mark
        peak.reset()
    before = peak.read()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del block
    assert peak.read() - before > 50
    if peak.resettable:
        # torch's allocator may keep a freed block resident; an anonymous mapping that is closed
        # surely leaves the resident set, so the reset must bring the peak back below it.
        mapping = mmap.mmap(-1, 64 * 2**20)
        mapping.write(b"\1" * len(mapping))
        high = peak.read()
        mapping.close()
        peak.reset()
        assert peak.read() < high - 50
        assert peak.read() < rss_mb() + 5


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, tmp_path):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("aot_autograd does not currently support double backward")
        return run

    config = {"iterations": 3, "meta_batch_size": 4, "shots": 5, "checkpoint_every": 3,
              "log_every": 3, "val_every": 3, "val_tasks": 4}
    train(resolve("sinusoid", config), tmp_path / "eager", progress=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="running eagerly") as caught:
        train(resolve("sinusoid", {**config, "compile": True}), tmp_path / "compiled",
              progress=False)
    assert sum("running eagerly" in str(w.message) for w in caught) == 1
    a, b = (load_file(checkpoint.latest(tmp_path / n) / "model.safetensors")
            for n in ("eager", "compiled"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ["checkpointed", "stacked"])
def test_compile_is_not_tried_where_it_is_known_to_fail(case):
    """Second order through a custom backward or a compiled inner backward: eager at once."""
    if case == "checkpointed":
        learner, options = MAML(mlp([1, 4, 1]), 0.01, 1, False, "mse"), {"checkpoint_inner": True}
    else:
        learner, options = MAML(Conv4(3, hidden=4), 0.1, 1, False, "cross_entropy"), {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn = scale.meta_loss_fn(learner, compile=True, **options)
    assert fn == learner.meta_loss and "running eagerly" in str(caught[0].message)
    first_order = MAML(Conv4(3, hidden=4), 0.1, 1, True, "cross_entropy")
    assert isinstance(scale.meta_loss_fn(first_order, compile=True), scale.CompiledMetaLoss)
