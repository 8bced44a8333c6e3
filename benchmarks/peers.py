"""One MAML meta-step in plain PyTorch, learn2learn and higher, for side-by-side benchmarks.

Every ``*_meta_loss`` function adapts a copy of ``model`` to each task in a batch and returns the
mean query loss after adaptation, not yet backpropagated: the caller calls ``.backward()`` (and
zeroes grads and steps the optimizer), so all three paths leave the same meta-gradient in the
model's ``.grad`` and time the same work. Task tensors have a leading task dimension
(``support_x`` is ``[tasks, shots, ...]``).

The peers are imported lazily, so this module imports without them; ``available_peers()`` says
which can run. ``benchmarks/install_peers.sh`` installs them; ``benchmarks/check_peers.py`` checks
that all three paths agree on the meta-gradient.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

LossFn = Callable[[Tensor, Tensor], Tensor]

# Peer wrappers are built once per model, as a benchmark of the peer would do, not on every call.
# Keyed on id(model); the entry keeps the model alive, so the id cannot be reused while cached.
_L2L_WRAPPERS: dict[int, tuple[nn.Module, Any]] = {}
_HIGHER_OPTIMIZERS: dict[int, tuple[nn.Module, torch.optim.SGD]] = {}
_L2L_MAML_CLASS: type | None = None


def _load_higher() -> ModuleType:
    """Import ``higher`` only when asked, so this module loads without it."""
    import higher

    return higher


def _load_l2l_maml() -> type:
    """Return learn2learn's ``MAML`` class without running ``learn2learn/__init__.py``.

    learn2learn 0.2.0's top-level import pulls in ``learn2learn.vision`` (torchvision, whose PyPI
    build does not load beside the CPU torch), ``learn2learn.gym`` (gym) and
    ``learn2learn.data`` (requests, tqdm), and ``from learn2learn.algorithms.maml import MAML``
    runs it too. ``learn2learn.algorithms.maml`` itself needs only torch and
    ``learn2learn.utils``, so the two parent packages are put in ``sys.modules`` as empty
    stand-ins while it loads, then taken out again so a later real ``import learn2learn`` is
    unaffected.
    """
    global _L2L_MAML_CLASS
    if _L2L_MAML_CLASS is not None:
        return _L2L_MAML_CLASS
    loaded = sys.modules.get("learn2learn.algorithms.maml")
    if loaded is None:
        if importlib.util.find_spec("learn2learn") is None:
            raise ImportError("learn2learn is not installed (see benchmarks/install_peers.sh)")
        stand_ins = []
        try:
            for name in ("learn2learn", "learn2learn.algorithms"):
                if name not in sys.modules:
                    spec = importlib.util.find_spec(name)
                    assert spec is not None
                    sys.modules[name] = importlib.util.module_from_spec(spec)
                    stand_ins.append(name)
            loaded = importlib.import_module("learn2learn.algorithms.maml")
        finally:
            for name in stand_ins:
                sys.modules.pop(name, None)
    _L2L_MAML_CLASS = loaded.MAML
    return _L2L_MAML_CLASS


def double_batch(batch):
    """The batch in float64 (integer labels stay as they are), for the gradient checks."""
    from mamlkit import TaskBatch

    cast = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
    return TaskBatch(tuple(map(cast, batch.support)), tuple(map(cast, batch.query)))


def check_against_plain_loop(grads: dict) -> None:
    """Every implementation's flat float64 meta-gradient must equal the plain loop's to 1e-9
    relative before it is timed; a mismatch stops the benchmark."""
    reference = grads["plain loop"]
    scale = reference.abs().max().item()
    for name, g in grads.items():
        error = (g - reference).abs().max().item()
        status = "ok" if error <= 1e-9 * max(scale, 1e-6) else "MISMATCH"
        print(f"# float64 gradient check {name:13s} max |diff| {error:.1e} "
              f"(largest {scale:.1e}) {status}")
        if status != "ok":
            raise SystemExit(f"{name} disagrees with the plain loop; not timing it.")


def available_peers() -> dict[str, str | None]:
    """Map each peer library to None if it can run here, else the reason it cannot."""
    status: dict[str, str | None] = {}
    for name, load in (("higher", _load_higher), ("learn2learn", _load_l2l_maml)):
        try:
            load()
            status[name] = None
        except Exception as exc:  # a broken peer may raise anything on import
            status[name] = f"{type(exc).__name__}: {exc}"
    return status


def clear_peer_caches() -> None:
    """Drop the per-model peer wrappers (and the references they hold to the models)."""
    _L2L_WRAPPERS.clear()
    _HIGHER_OPTIMIZERS.clear()


def plain_loop_meta_loss(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    inner_lr: float,
    inner_steps: int,
    first_order: bool,
    loss_fn: LossFn,
) -> Tensor:
    """Mean post-adaptation query loss from a plain loop over tasks (the no-library baseline)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    losses = []
    for t in range(support_x.shape[0]):
        fast = params
        for _ in range(inner_steps):
            loss = loss_fn(functional_call(model, fast, (support_x[t],)), support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: p - inner_lr * g for (n, p), g in zip(fast.items(), grads, strict=True)}
        losses.append(loss_fn(functional_call(model, fast, (query_x[t],)), query_y[t]))
    return torch.stack(losses).mean()


def learn2learn_meta_loss(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    inner_lr: float,
    inner_steps: int,
    first_order: bool,
    loss_fn: LossFn,
) -> Tensor:
    """Mean post-adaptation query loss via ``learn2learn.algorithms.maml.MAML`` clone/adapt."""
    cached = _L2L_WRAPPERS.get(id(model))
    if cached is None or cached[0] is not model:
        maml_class = _load_l2l_maml()
        cached = (model, maml_class(model, lr=inner_lr, first_order=first_order))
        _L2L_WRAPPERS[id(model)] = cached
    maml = cached[1]
    maml.lr = inner_lr  # a plain attribute: setting it costs nothing and keeps one wrapper
    losses = []
    for t in range(support_x.shape[0]):
        learner = maml.clone(first_order=first_order)
        for _ in range(inner_steps):
            learner.adapt(loss_fn(learner(support_x[t]), support_y[t]), first_order=first_order)
        losses.append(loss_fn(learner(query_x[t]), query_y[t]))
    return torch.stack(losses).mean()


def higher_meta_loss(
    model: nn.Module,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    inner_lr: float,
    inner_steps: int,
    first_order: bool,
    loss_fn: LossFn,
) -> Tensor:
    """Mean post-adaptation query loss via ``higher.innerloop_ctx`` with an SGD inner optimizer.

    With ``track_higher_grads=False`` higher detaches every fast weight, so no gradient would reach
    the model. For first order the query pass therefore uses ``fast.detach() + (p - p.detach())``:
    the value of the adapted weight (exactly, the added term is zero) with the identity as its
    derivative w.r.t. the initial weight, which is first-order MAML's gradient.
    """
    higher = _load_higher()
    cached = _HIGHER_OPTIMIZERS.get(id(model))
    if cached is None or cached[0] is not model:
        cached = (model, torch.optim.SGD(model.parameters(), lr=inner_lr))
        _HIGHER_OPTIMIZERS[id(model)] = cached
    inner_opt = cached[1]
    for group in inner_opt.param_groups:
        group["lr"] = inner_lr
    initial = list(model.parameters())  # the order of higher's fast weights
    losses = []
    for t in range(support_x.shape[0]):
        with higher.innerloop_ctx(
            model, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fmodel, diffopt):
            for _ in range(inner_steps):
                diffopt.step(loss_fn(fmodel(support_x[t]), support_y[t]))
            if first_order:
                fast = [
                    f.detach() + (p - p.detach())
                    for f, p in zip(fmodel.fast_params, initial, strict=True)
                ]
                out = fmodel(query_x[t], params=fast)
            else:
                out = fmodel(query_x[t])
            losses.append(loss_fn(out, query_y[t]))
    return torch.stack(losses).mean()
