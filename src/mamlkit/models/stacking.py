"""Task stacking for any model built from standard layers: many tasks in one call.

``torch.fx`` traces the model once (standard layers and ``TaskBatchNorm`` as
leaves) and an interpreter runs the graph for ``T`` tasks at once, with parameters stacked
``[T, ...]`` and input ``[T, N, ...]``. Every value lives in one of two layouts:

- folded ``[N, T*C, ...]``: tasks folded into channels. A convolution is one grouped call
  (``groups = T * groups``), batch norm one fused call over ``T*C`` channels and group norm one
  over ``T*G`` groups (exactly each task's statistics), pooling and activations act per channel
  as they are. Channels-last for large batches of images, as ``task_conv`` measured.
- task-major ``[T, N, ...]``: Linear (one ``bmm``), LayerNorm, Flatten, reshapes, reductions.

A value changes layout only where an operation needs the other one, so chains of conv / norm /
activation / pool / residual add stay folded (for ``Conv4`` the same kernels, bit for bit, as
its former hand-written stacked forward: ``benchmarks/stacking_paths.py``). Tasks never
mix, so the gradient of the summed per-task losses with respect to the stacked parameters is
every task's own gradient (``functional.stacked``), and grouped convolutions and fused norms are
exact at second order outside ``vmap``. A layer or operation without a rule here makes the model
unstackable, with a reason naming it (``stacking_problem``): the caller keeps another batching.

Custom modules are traced through (residual blocks that add or concatenate branches work);
their Python branches on ``self.training`` are fixed when traced, leaves read their mode per call.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Graph, Node, Tracer
from torch.fx.node import map_arg
from torch.utils import _pytree as pytree

from mamlkit.functional.stacked import stack_params
from mamlkit.models.batch_norm import TaskBatchNorm
from mamlkit.models.task_conv import stacked_batch_norm, stacked_linear, tasks_to_channels


class Unstackable(ValueError):
    """The model holds a layer or operation without a task-stacked form (the message names it)."""


@dataclass
class Stacked:
    """A value of every task: ``folded`` ``[N, T*C, ...]`` or task-major ``[T, ...]``."""

    data: Tensor
    folded: bool

    def task_ndim(self) -> int:
        """Dimensions of one task's value (what the plain model sees)."""
        return self.data.dim() - (0 if self.folded else 1)

    def task_shape(self, tasks: int) -> torch.Size:
        if not self.folded:
            return self.data.shape[1:]
        return torch.Size([self.data.shape[0], self.data.shape[1] // tasks,
                           *self.data.shape[2:]])


def _to_folded(x: Tensor) -> Tensor:
    """``[T, N, C, ...]`` -> ``[N, T*C, ...]`` (one copy; channels-last for big image batches)."""
    if x.dim() == 5:
        return tasks_to_channels(x)
    if x.dim() < 3:
        raise RuntimeError(f"A per-task value of shape {list(x.shape[1:])} has no channel "
                           "dimension to fold tasks into.")
    return x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def _to_tasks(x: Tensor, tasks: int) -> Tensor:
    """``[N, T*C, ...]`` -> ``[T, N, C, ...]`` (a view)."""
    return x.unflatten(1, (tasks, -1)).transpose(0, 1)


def _shift(dim: int, ndim: int) -> int:
    """A dimension of one task's value -> the same dimension of the task-major value."""
    if not -ndim <= dim < max(ndim, 1):
        raise IndexError(f"Dimension {dim} is out of range for a per-task value of {ndim} dims.")
    return dim % max(ndim, 1) + 1


@dataclass
class _Step:
    """One graph node and the rule that computes its stacked value."""

    node: Node
    rule: Callable[[_Run, _Step], Any]
    module: nn.Module | None = None
    names: dict[str, str] = field(default_factory=dict)  # local -> params/buffers key
    inplace: bool = False  # an activation may overwrite its input (sole user, output unsaved)


class _Run:
    """The state of one stacked call: tasks, parameters, buffers, values computed so far."""

    def __init__(self, tasks: int, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                 observe: bool = False) -> None:
        self.tasks, self.params, self.buffers = tasks, params, buffers
        self.observe = observe  # fold each task's batch statistics into the running ones
        self.env: dict[Node, Any] = {}
        self.cache: dict[tuple[Node, bool], Tensor] = {}

    def value(self, arg: Any) -> Any:
        return self.env[arg] if isinstance(arg, Node) else arg

    def load(self, node: Node) -> tuple[tuple, dict]:
        """The node's arguments with every input node replaced by its value."""
        return (map_arg(node.args, self.env.__getitem__),
                map_arg(node.kwargs, self.env.__getitem__))

    def stacked(self, value: Any) -> Stacked:
        """A shared tensor (a buffer, a constant) as every task's value."""
        if isinstance(value, Stacked):
            return value
        if not isinstance(value, Tensor):
            raise RuntimeError(f"Expected a tensor, got {type(value).__name__}.")
        return Stacked(value.unsqueeze(0).expand(self.tasks, *value.shape), False)

    def convert(self, arg: Any, folded: bool) -> Tensor:
        """``arg``'s value in the folded or task-major layout (converted once per node)."""
        value = self.stacked(self.value(arg))
        if value.folded == folded:
            return value.data
        key = (arg, folded) if isinstance(arg, Node) else None
        if key is not None and key in self.cache:
            return self.cache[key]
        data = _to_folded(value.data) if folded else _to_tasks(value.data, self.tasks)
        if key is not None:
            self.cache[key] = data
        return data

    def fold(self, arg: Any) -> Tensor:
        return self.convert(arg, True)

    def major(self, arg: Any) -> Tensor:
        return self.convert(arg, False)

    def param(self, step: _Step, name: str) -> Tensor | None:
        """A parameter of the step's module, stacked ``[T, ...]`` (None if it has none)."""
        key = step.names.get(name)
        return None if key is None else self.params[key]

    def weight(self, step: _Step) -> Tensor:
        """The stacked weight of a layer that always has one (convolution, linear, PReLU)."""
        weight = self.param(step, "weight")
        assert weight is not None
        return weight

    def buffer(self, step: _Step, name: str) -> Tensor:
        key = step.names[name]
        return self.buffers[key] if key in self.buffers else getattr(step.module, name)


def _flat(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.reshape(-1)


# --- layers -----------------------------------------------------------------------------------

def _conv(run: _Run, step: _Step) -> Stacked:
    """Each task's convolution as one grouped convolution of the folded input."""
    m = step.module
    assert isinstance(m, nn.modules.conv._ConvNd)
    x, w = run.fold(step.node.args[0]), run.weight(step)
    w = w.reshape(-1, *w.shape[2:])
    padding: Any = m.padding
    if m.padding_mode != "zeros":
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        padding = 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(m.kernel_size) - 1]
    out = conv(x, w, _flat(run.param(step, "bias")), m.stride, padding, m.dilation,
               run.tasks * m.groups)
    return Stacked(out, True)


def _batch_norm(run: _Run, step: _Step) -> Stacked:
    """``TaskBatchNorm`` of every task: one batch norm over the ``T*C`` folded channels."""
    m = step.module
    assert isinstance(m, TaskBatchNorm)
    x = run.fold(step.node.args[0])
    w, b = _flat(run.param(step, "weight")), _flat(run.param(step, "bias"))
    if m.track_running_stats and not m.training:
        mean = run.buffer(step, "running_mean").repeat(run.tasks)
        var = run.buffer(step, "running_var").repeat(run.tasks)
        return Stacked(F.batch_norm(x, mean, var, w, b, False, 0.0, m.eps), True)
    if not (run.observe and m.track_running_stats):
        return Stacked(stacked_batch_norm(x, w, b, m.eps), True)
    # the same call also writes each task's mean and unbiased variance (momentum 1)
    stats = torch.zeros(2, run.tasks, x.shape[1] // run.tasks, dtype=x.dtype, device=x.device)
    out = F.batch_norm(x, stats[0].view(-1), stats[1].view(-1), w, b, True, 1.0, m.eps)
    for mean, var in zip(stats[0], stats[1], strict=True):  # task after task, as a loop would
        m.fold_in(mean, var)
    return Stacked(out, True)


def _group_norm(run: _Run, step: _Step) -> Stacked:
    m = step.module
    assert isinstance(m, nn.GroupNorm)
    out = F.group_norm(run.fold(step.node.args[0]), run.tasks * m.num_groups,
                       _flat(run.param(step, "weight")), _flat(run.param(step, "bias")), m.eps)
    return Stacked(out, True)


def _instance_norm(run: _Run, step: _Step) -> Stacked:
    m = step.module
    assert isinstance(m, nn.modules.instancenorm._InstanceNorm)
    out = F.instance_norm(run.fold(step.node.args[0]), None, None,
                          _flat(run.param(step, "weight")), _flat(run.param(step, "bias")),
                          True, 0.0, m.eps)
    return Stacked(out, True)


def _layer_norm(run: _Run, step: _Step) -> Stacked:
    """Task-major: normalise over the trailing dims, then each task's own scale and shift."""
    m = step.module
    assert isinstance(m, nn.LayerNorm)
    x = run.major(step.node.args[0])
    out = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
    shape = (run.tasks, *[1] * (x.dim() - 1 - len(m.normalized_shape)), *m.normalized_shape)
    w, b = run.param(step, "weight"), run.param(step, "bias")
    if w is not None:
        out = out * w.reshape(shape)
    if b is not None:
        out = out + b.reshape(shape)
    return Stacked(out, False)


def _linear(run: _Run, step: _Step) -> Stacked:
    """Each task's linear layer as one batched product: ``[T, N.., F]`` -> ``[T, N.., O]``."""
    x, w = run.major(step.node.args[0]), run.weight(step)
    out = stacked_linear(x.reshape(run.tasks, -1, x.shape[-1]), w, run.param(step, "bias"))
    return Stacked(out.reshape(*x.shape[:-1], w.shape[1]), False)


def _prelu(run: _Run, step: _Step) -> Stacked:
    x, w = run.fold(step.node.args[0]), run.weight(step)
    if w.shape[1] == 1:
        w = w.expand(run.tasks, x.shape[1] // run.tasks)
    return Stacked(F.prelu(x, w.reshape(-1)), True)


def _per_channel_layer(run: _Run, step: _Step) -> Stacked:
    """Pooling, channel dropout: the layer itself on the folded value (each channel alone)."""
    assert step.module is not None
    return Stacked(step.module(run.fold(step.node.args[0])), True)


def _elementwise_layer(run: _Run, step: _Step) -> Any:
    """Activations, dropout, identity: the layer on the value in whatever layout it has."""
    value = run.value(step.node.args[0])
    if not isinstance(value, Stacked):
        return step.module(value)  # type: ignore[misc]
    if step.inplace and isinstance(step.module, nn.ReLU):
        return Stacked(torch.relu_(value.data), value.folded)
    if step.inplace and isinstance(step.module, nn.LeakyReLU):
        return Stacked(F.leaky_relu_(value.data, step.module.negative_slope), value.folded)
    return Stacked(step.module(value.data), value.folded)  # type: ignore[misc]


def _flatten_layer(run: _Run, step: _Step) -> Stacked:
    m = step.module
    assert isinstance(m, nn.Flatten)
    value = run.stacked(run.value(step.node.args[0]))
    nd = value.task_ndim()
    x = run.major(step.node.args[0])
    return Stacked(x.flatten(_shift(m.start_dim, nd), _shift(m.end_dim, nd)), False)


def _softmax_layer(run: _Run, step: _Step) -> Stacked:
    m = step.module
    assert isinstance(m, nn.Softmax | nn.LogSoftmax)
    value = run.stacked(run.value(step.node.args[0]))
    x = run.major(step.node.args[0])
    fn = F.softmax if isinstance(m, nn.Softmax) else F.log_softmax
    if m.dim is None:
        raise RuntimeError(f"{step.node.name}: {type(m).__name__} needs an explicit dim to be "
                           "task-stacked.")
    return Stacked(fn(x, _shift(m.dim, value.task_ndim())), False)


ELEMENTWISE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.LogSigmoid, nn.Threshold, nn.Identity,
    nn.Dropout, nn.AlphaDropout)
PER_CHANNEL_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Upsample)
# (layer classes, rule), the first match wins
_LAYER_RULES: tuple[tuple[Any, Callable[[_Run, _Step], Any]], ...] = (
    (nn.modules.conv._ConvNd, _conv), (TaskBatchNorm, _batch_norm), (nn.GroupNorm, _group_norm),
    (nn.modules.instancenorm._InstanceNorm, _instance_norm), (nn.LayerNorm, _layer_norm),
    (nn.Linear, _linear), (nn.PReLU, _prelu), (nn.Flatten, _flatten_layer),
    (nn.Softmax | nn.LogSoftmax, _softmax_layer), (ELEMENTWISE_LAYERS, _elementwise_layer),
    (PER_CHANNEL_LAYERS, _per_channel_layer))


# --- functions and methods --------------------------------------------------------------------

def _method(name: str) -> Callable[..., Any]:
    """``self.name(*args, **kwargs)`` as a function of ``self``."""
    return lambda self, *args, **kwargs: getattr(self, name)(*args, **kwargs)


def _callable(step: _Step) -> Callable[..., Any]:
    target = step.node.target
    if step.node.op == "call_method":
        assert isinstance(target, str)
        return _method(_OUT_OF_PLACE_METHODS.get(target, target))
    assert callable(target)
    return _OUT_OF_PLACE.get(target, target)


def _stays_folded(run: _Run, values: list[Any]) -> bool:
    """Whether an elementwise op may run on folded values: some are folded, all have the same
    per-task rank and channels, and every shared tensor is a single number."""
    stacked = [run.stacked(v) for v in values if isinstance(v, Stacked)]
    if not any(v.folded for v in stacked):
        return False
    shapes = {(len(s), s[1] if len(s) > 1 else None)
              for s in (v.task_shape(run.tasks) for v in stacked)}
    ok_shared = all(v.numel() == 1 for v in values if isinstance(v, Tensor))
    return ok_shared and len(shapes) == 1 and next(iter(shapes))[0] >= 2


def _elementwise(run: _Run, step: _Step) -> Any:
    """An elementwise op: folded if its operands allow it, else task-major with each task's
    values aligned on the right (broadcasting as in the plain model)."""
    fn = _callable(step)
    leaves, spec = pytree.tree_flatten((step.node.args, step.node.kwargs))
    values = [run.value(a) for a in leaves]
    if not any(isinstance(v, Stacked) for v in values):
        args, kwargs = pytree.tree_unflatten(values, spec)
        return fn(*args, **kwargs)
    if step.inplace:  # relu of a fresh value nobody else reads (see _may_overwrite)
        (only,) = [v for v in values if isinstance(v, Stacked)]
        return Stacked(torch.relu_(only.data), only.folded)
    folded = _stays_folded(run, values)
    if folded:
        new = [run.fold(a) if isinstance(v, Stacked) else v
               for a, v in zip(leaves, values, strict=True)]
    else:
        rank = max([v.task_ndim() for v in values if isinstance(v, Stacked)]
                   + [v.dim() for v in values if isinstance(v, Tensor)])
        new = [_aligned(run.major(a), rank) if isinstance(v, Stacked) else v
               for a, v in zip(leaves, values, strict=True)]
    args, kwargs = pytree.tree_unflatten(new, spec)
    return Stacked(fn(*args, **kwargs), folded)


def _aligned(x: Tensor, rank: int) -> Tensor:
    """``[T, *s]`` -> ``[T, 1, ..., 1, *s]`` with ``rank`` per-task dims (right-aligned)."""
    return x.reshape(x.shape[0], *[1] * (rank - x.dim() + 1), *x.shape[1:])


def _per_channel(run: _Run, step: _Step) -> Stacked:
    """Pooling and friends as functions: the function on the folded value."""
    args, kwargs = run.load(step.node)
    out = _callable(step)(run.fold(step.node.args[0]), *args[1:], **kwargs)
    if not isinstance(out, Tensor):
        raise RuntimeError(f"{step.node.name}: only the tensor form has a task-stacked rule.")
    return Stacked(out, True)


def _arg(step: _Step, run: _Run, index: int, name: str, default: Any) -> Any:
    args, kwargs = step.node.args, step.node.kwargs
    return run.value(args[index] if len(args) > index else kwargs.get(name, default))


def _shape_query(run: _Run, step: _Step) -> Any:
    """``x.size(d)``, ``x.shape``, ``x.dim()``, ``x.ndim``, ``x.numel()``: each task's own."""
    value = run.stacked(run.value(step.node.args[0]))
    shape = value.task_shape(run.tasks)
    what = step.node.target if step.node.op == "call_method" else step.node.args[1]
    if what == "size":
        dim = _arg(step, run, 1, "dim", None)
        return shape if dim is None else shape[dim]
    if what in ("dim", "ndim"):
        return len(shape)
    if what == "numel":
        return shape.numel()
    if what == "shape":
        return shape
    return getattr(value.data, str(what))


def _major_x(run: _Run, step: _Step) -> tuple[Tensor, int]:
    """The first argument task-major, and the rank of one task's value."""
    value = run.stacked(run.value(step.node.args[0]))
    return run.major(step.node.args[0]), value.task_ndim()


def _flatten(run: _Run, step: _Step) -> Stacked:
    x, nd = _major_x(run, step)
    start, end = _arg(step, run, 1, "start_dim", 0), _arg(step, run, 2, "end_dim", -1)
    return Stacked(x.flatten(_shift(start, nd), _shift(end, nd)), False)


def _reshape(run: _Run, step: _Step) -> Stacked:
    x, _ = _major_x(run, step)
    shape = [run.value(a) for a in step.node.args[1:]] or [_arg(step, run, 1, "shape", None)]
    if len(shape) == 1 and isinstance(shape[0], tuple | list | torch.Size):
        shape = list(shape[0])
    return Stacked(x.reshape(run.tasks, *shape), False)


def _reduce(run: _Run, step: _Step) -> Stacked:
    """mean / sum / amax / ... over each task's dims (all of them without ``dim``)."""
    x, nd = _major_x(run, step)
    dim = _arg(step, run, 1, "dim", None)
    dims = range(nd) if dim is None else [dim] if isinstance(dim, int) else dim
    shifted = tuple(_shift(d, nd) for d in dims)
    if not shifted:
        return Stacked(x, False)
    rest = [run.value(a) for a in step.node.args[2:]]
    kwargs = {k: run.value(v) for k, v in step.node.kwargs.items() if k != "dim"}
    return Stacked(_callable(step)(x, shifted, *rest, **kwargs), False)


def _along_dim(run: _Run, step: _Step) -> Stacked:
    """softmax, log_softmax, squeeze, unsqueeze along one dim of each task's value."""
    x, nd = _major_x(run, step)
    target = step.node.target
    name = target if isinstance(target, str) else target.__name__
    dim = _arg(step, run, 1, "dim", None)
    if dim is None:
        raise RuntimeError(f"{step.node.name}: {name} needs an explicit dim to be task-stacked.")
    rank = nd + 1 if name == "unsqueeze" else nd
    rest = [run.value(a) for a in step.node.args[2:]]
    kwargs = {k: run.value(v) for k, v in step.node.kwargs.items() if k != "dim"}
    return Stacked(_callable(step)(x, _shift(dim, rank), *rest, **kwargs), False)


def _permute(run: _Run, step: _Step) -> Stacked:
    x, nd = _major_x(run, step)
    dims = [run.value(a) for a in step.node.args[1:]]
    if step.node.target == "permute":
        dims = list(dims[0]) if len(dims) == 1 and not isinstance(dims[0], int) else dims
        return Stacked(x.permute(0, *[_shift(d, nd) for d in dims]), False)
    return Stacked(x.transpose(_shift(dims[0], nd), _shift(dims[1], nd)), False)


def _cat(run: _Run, step: _Step) -> Stacked:
    """Concatenation; along channels of folded values it keeps every task's channels together."""
    parts = cast(Sequence[Node], step.node.args[0])  # cat's and stack's list of tensors
    dim = _arg(step, run, 1, "dim", 0)
    values = [run.stacked(run.value(p)) for p in parts]
    nd = values[0].task_ndim()
    if step.node.target is torch.stack:
        return Stacked(torch.stack([run.major(p) for p in parts], _shift(dim, nd + 1)), False)
    if _shift(dim, nd) == 2 and nd >= 2 and any(v.folded for v in values):
        pieces = [run.fold(p).unflatten(1, (run.tasks, -1)) for p in parts]
        return Stacked(torch.cat(pieces, 2).flatten(1, 2), True)
    return Stacked(torch.cat([run.major(p) for p in parts], _shift(dim, nd)), False)


def _getitem(run: _Run, step: _Step) -> Stacked:
    """Indexing each task's value with ints, slices, None and Ellipsis."""
    index = run.value(step.node.args[1])
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, Tensor | Stacked) for i in index):
        raise RuntimeError(f"{step.node.name}: indexing with tensors has no task-stacked rule.")
    x, _ = _major_x(run, step)
    return Stacked(x[(slice(None), *index)], False)


def _pad(run: _Run, step: _Step) -> Stacked:
    """``F.pad``: folded when it pads only spatial dims, else task-major (constant mode)."""
    value = run.stacked(run.value(step.node.args[0]))
    pad = _arg(step, run, 1, "pad", ())
    args = [run.value(a) for a in step.node.args[1:]]
    kwargs = {k: run.value(v) for k, v in step.node.kwargs.items()}
    if len(pad) // 2 <= value.task_ndim() - 2:
        return Stacked(F.pad(run.fold(step.node.args[0]), *args, **kwargs), True)
    return Stacked(F.pad(run.major(step.node.args[0]), *args, **kwargs), False)


_OUT_OF_PLACE: dict[Any, Any] = {operator.iadd: operator.add, operator.isub: operator.sub,
                                 operator.imul: operator.mul, operator.itruediv: operator.truediv}
_OUT_OF_PLACE_METHODS = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div",
                         "clamp_": "clamp", "sigmoid_": "sigmoid", "tanh_": "tanh"}
ELEMENTWISE_FUNCTIONS: frozenset[Any] = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.add, torch.sub,
    torch.mul, torch.div, torch.maximum, torch.minimum, torch.where, torch.relu, torch.relu_,
    F.relu, F.relu_, F.relu6, F.elu, F.selu, F.celu, F.leaky_relu, F.gelu, F.silu, F.mish,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.logsigmoid, F.tanhshrink,
    F.sigmoid, F.tanh, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.abs, torch.sqrt,
    torch.rsqrt, torch.square, torch.clamp, torch.sin, torch.cos, F.dropout, F.alpha_dropout})
ELEMENTWISE_METHODS = frozenset({
    "add", "sub", "mul", "div", "neg", "pow", "relu", "relu_", "sigmoid", "tanh", "exp", "log",
    "abs", "sqrt", "rsqrt", "square", "clamp", "clamp_min", "clamp_max", "sin", "cos", "float",
    "double", "to", "type_as", "contiguous", *_OUT_OF_PLACE_METHODS})
PER_CHANNEL_FUNCTIONS: frozenset[Any] = frozenset({
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.lp_pool1d, F.lp_pool2d, F.dropout1d, F.dropout2d, F.dropout3d,
    F.interpolate})
_RULES: dict[Any, Callable[[_Run, _Step], Any]] = {
    **dict.fromkeys(ELEMENTWISE_FUNCTIONS | ELEMENTWISE_METHODS, _elementwise),
    **dict.fromkeys(PER_CHANNEL_FUNCTIONS, _per_channel),
    **dict.fromkeys(("size", "dim", "numel"), _shape_query), getattr: _shape_query,
    torch.flatten: _flatten, "flatten": _flatten, "reshape": _reshape, "view": _reshape,
    torch.reshape: _reshape,
    **dict.fromkeys((torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var,
                     torch.logsumexp, "mean", "sum", "amax", "amin", "std", "var", "logsumexp"),
                    _reduce),
    **dict.fromkeys((F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.squeeze,
                     torch.unsqueeze, "softmax", "log_softmax", "squeeze", "unsqueeze"),
                    _along_dim),
    "permute": _permute, "transpose": _permute, torch.permute: _permute,
    torch.transpose: _permute, torch.cat: _cat, torch.concat: _cat, torch.stack: _cat,
    operator.getitem: _getitem, F.pad: _pad}
# ops whose result is a plain number or shape: what depends on them is not per-task data
_SHAPE_QUERIES = frozenset({"size", "dim", "numel", "shape", "ndim", "dtype", "device"})


# --- compiling a model ------------------------------------------------------------------------

class _LeafTracer(Tracer):
    """Standard layers (torch.nn) and ``TaskBatchNorm`` stay single nodes; the rest is traced."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, TaskBatchNorm) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> Graph:
    try:
        return _LeafTracer().trace(model)
    except Exception as exc:  # fx raises many kinds for untraceable Python
        culprit = _untraceable_part(model)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unstackable(f"{culprit} cannot be traced by torch.fx ({detail})") from exc


def _untraceable_part(model: nn.Module) -> str:
    """The innermost traced-through module whose forward torch.fx cannot trace, as words."""
    tracer = _LeafTracer()
    for name, m in reversed(list(model.named_modules())):
        if name and not tracer.is_leaf_module(m, name):
            try:
                _LeafTracer().trace(m)
            except Exception:
                return f"module '{name}' ({type(m).__name__})"
    return f"{type(model).__name__}.forward"


def _layer_rule(m: nn.Module, name: str) -> Callable[[_Run, _Step], Any]:
    """The rule of a leaf layer, or Unstackable naming it."""
    what = f"layer '{name}' ({type(m).__name__})"
    if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
        raise Unstackable(f"{what} is an uninitialised lazy layer (run one forward pass first)")
    if isinstance(m, nn.modules.conv._ConvTransposeNd) or getattr(m, "return_indices", False):
        raise Unstackable(f"{what} has no task-stacked form")
    if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats:
        raise Unstackable(f"{what} tracks running statistics and has no task-stacked form")
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        raise Unstackable(f"{what} is stock batch norm (convert it with exact_batch_norm)")
    if isinstance(m, nn.Softmax | nn.LogSoftmax) and m.dim is None:
        raise Unstackable(f"{what} has no dim and no task-stacked form")
    for kinds, rule in _LAYER_RULES:
        if isinstance(m, kinds):
            return rule
    raise Unstackable(f"{what} has no task-stacked form")


def _may_overwrite(node: Node, modules: Mapping[str, nn.Module]) -> bool:
    """ReLU may run in place on its input: read by nobody else, produced by an op whose
    backward does not keep its output (conv, batch or group norm, addition)."""
    src = node.args[0] if node.args else None
    if not isinstance(src, Node) or len(src.users) != 1:
        return False
    if src.op == "call_module":
        return isinstance(modules[str(src.target)], nn.modules.conv._ConvNd | TaskBatchNorm
                          | nn.GroupNorm)
    return (src.op == "call_function" and src.target in (operator.add, torch.add)) or (
        src.op == "call_method" and src.target == "add")


def _is_relu(node: Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[str(node.target)]
        slope_ok = not isinstance(m, nn.LeakyReLU) or m.negative_slope >= 0  # autograd's rule
        return isinstance(m, nn.ReLU | nn.LeakyReLU) and not m.inplace and slope_ok
    return (node.op == "call_function" and node.target in (F.relu, torch.relu)
            and not node.kwargs.get("inplace", False)) or (
        node.op == "call_method" and node.target == "relu")


def _local_names(m: nn.Module, keys: Mapping[int, str]) -> dict[str, str]:
    """The module's own parameters and buffers -> their keys in the model's dicts."""
    own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
    return {local: keys[id(t)] for local, t in own if t is not None and id(t) in keys}


def _input(run: _Run, step: _Step) -> Stacked:
    return Stacked(run.env[step.node], False)  # the caller put the input there


def _constant(run: _Run, step: _Step) -> Any:
    """A node that no per-task value flows into: what the plain model would compute."""
    args, kwargs = run.load(step.node)
    node = step.node
    if node.op == "call_module":
        return step.module(*args, **kwargs)  # type: ignore[misc]
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


def _get_attr(model: nn.Module, node: Node, keys: Mapping[int, str]) -> tuple[_Step, bool]:
    """A parameter read in ``forward`` is every task's own (True); buffers and constants are
    shared (False)."""
    obj: Any = model
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    key = keys.get(id(obj)) if isinstance(obj, Tensor) else None
    if isinstance(obj, nn.Parameter) and key is not None:
        return _Step(node, lambda run, step: Stacked(run.params[key], False)), True
    if key is not None:
        return _Step(node, lambda run, step: run.buffers.get(key, obj)), False
    return _Step(node, lambda run, step: obj), False


def _placeholder(node: Node, per_task: set[Node]) -> _Step:
    """The first input is the stacked one; later ones take their defaults."""
    if not per_task:
        per_task.add(node)
        return _Step(node, _input)
    if not node.args:
        raise Unstackable(f"forward's second input '{node.target}' (only one is task-stacked)")
    return _Step(node, lambda run, step: node.args[0])


def _plan(node: Node, model: nn.Module, modules: Mapping[str, nn.Module],
          keys: Mapping[int, str], per_task: set[Node]) -> _Step:
    """The step computing ``node``; adds it to ``per_task`` if it carries per-task values."""
    if node.op == "placeholder":
        return _placeholder(node, per_task)
    if node.op == "get_attr":
        step, own = _get_attr(model, node, keys)
        if own:
            per_task.add(node)
        return step
    if node.op == "output":
        return _Step(node, _output)
    module = modules[str(node.target)] if node.op == "call_module" else None
    weighted = module is not None and any(True for _ in module.parameters(recurse=False))
    if not weighted and not any(n in per_task for n in node.all_input_nodes):
        return _Step(node, _constant, module)
    query = node.args[1] if node.target is getattr else node.target
    if query not in _SHAPE_QUERIES:
        per_task.add(node)
    inplace = _is_relu(node, modules) and _may_overwrite(node, modules)
    if module is not None:
        return _Step(node, _layer_rule(module, str(node.target)), module,
                     _local_names(module, keys), inplace)
    rule = _RULES.get(node.target)
    if rule is None or (node.target is getattr and query not in _SHAPE_QUERIES):
        raise Unstackable(f"operation {_op_name(node)} has no task-stacked form")
    if not _supported_call(node, rule):
        raise Unstackable(f"operation {_op_name(node)} with these arguments has no "
                          "task-stacked form")
    return _Step(node, rule, None, {}, inplace)


def _supported_call(node: Node, rule: Callable[[_Run, _Step], Any]) -> bool:
    """Argument forms the rules cannot serve, caught when compiling rather than when called:
    indexing with tensors, pooling that returns indices, softmax without ``dim``."""
    if rule is _getitem:
        return not any(isinstance(a, Node) for a in pytree.tree_leaves(node.args[1]))
    if rule is _per_channel:
        return not node.kwargs.get("return_indices", False)
    if rule is _along_dim:
        return (len(node.args) > 1 and node.args[1] is not None) or (
            node.kwargs.get("dim") is not None)
    return True


def _op_name(node: Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.target is getattr:
        return f"Tensor.{node.args[1]}"
    module = getattr(node.target, "__module__", None) or ""
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional",
              "torch._C._VariableFunctions": "torch"}.get(module, module)
    return f"{module}.{getattr(node.target, '__name__', node.target)}".lstrip(".")


def _output(run: _Run, step: _Step) -> Any:
    """Every task's outputs, task-major ``[T, N, ...]``."""
    def out(n: Node) -> Any:
        return run.major(n) if isinstance(run.env[n], Stacked) else run.env[n]

    return map_arg(step.node.args[0], out)


class StackedForward:
    """A traced model's task-stacked forward: ``(model, params, buffers, x) -> [T, N, ...]``.

    ``params`` are stacked ``[T, ...]`` (every parameter of the model, by name), ``buffers`` are
    shared, ``x`` is ``[T, N, ...]``; the result is what the plain model returns for each task,
    stacked on a leading task dimension.
    """

    def __init__(self, steps: list[_Step]) -> None:
        self.steps = steps

    def __call__(self, model: nn.Module, params: Mapping[str, Tensor],
                 buffers: Mapping[str, Tensor], x: Tensor, observe: bool = False) -> Any:
        """``observe``: also fold every task's batch statistics, in task order, into the running
        statistics of tracking ``TaskBatchNorm`` layers (in training mode)."""
        tasks = next((p.shape[0] for p in params.values()), None)
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] != (tasks or x.shape[0]):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"A task-stacked forward of {tasks or 'T'} tasks needs input "
                             f"[tasks, N, ...]; got {got}.")
        run = _Run(x.shape[0], params, buffers, observe)
        for step in self.steps:
            if step.rule is _input:
                run.env[step.node] = x
            run.env[step.node] = step.rule(run, step)
        return run.env[self.steps[-1].node]


def _compile(model: nn.Module) -> StackedForward:
    graph = _trace(model)
    for name, p in model.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise Unstackable(f"parameter '{name}' is uninitialised (a lazy layer; run one "
                              "forward pass first)")
    keys = {id(t): n for n, t in [*model.named_parameters(), *model.named_buffers()]}
    modules = dict(model.named_modules())
    per_task: set[Node] = set()
    steps = [_plan(node, model, modules, keys, per_task) for node in graph.nodes]
    return StackedForward(steps)


_COMPILED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, StackedForward | str]] = (
    weakref.WeakKeyDictionary())


def _structure(model: nn.Module) -> tuple:
    """What a compiled forward depends on: the model's modules (replacing one re-traces)."""
    return tuple((name, id(m)) for name, m in model.named_modules())


def compile_stacking(model: nn.Module) -> StackedForward:
    """The model's task-stacked forward, traced once and cached; ``Unstackable`` if a layer or
    operation has no task-stacked form (the message names it)."""
    structure = _structure(model)
    cached = _COMPILED.get(model)
    if cached is None or cached[0] != structure:
        try:
            result: StackedForward | str = _compile(model)
        except Unstackable as exc:
            result = str(exc)
        except Exception as exc:  # a model this analysis did not foresee: say so, do not break
            result = (f"{type(model).__name__} could not be analysed ({type(exc).__name__}: "
                      f"{str(exc)[:200]})")
        cached = (structure, result)
        _COMPILED[model] = cached
    if isinstance(cached[1], str):
        raise Unstackable(cached[1])
    return cached[1]


def stacking_problem(model: nn.Module) -> str | None:
    """None if ``model`` can be task-stacked, else what prevents it (naming the layer or op)."""
    try:
        compile_stacking(model)
    except Unstackable as exc:
        return str(exc)
    return None


def stacker(model: nn.Module) -> Callable[..., Any]:
    """``functional.resolve_batching``'s ``Stacker``: ``stacked_forward`` for a model that can
    be stacked, else ``Unstackable`` (a ValueError) naming what prevents it."""
    compile_stacking(model)
    return stacked_forward


def stacked_forward(model: nn.Module, params: Mapping[str, Tensor],
                    buffers: Mapping[str, Tensor], x: Tensor) -> Any:
    """``model`` run for ``T`` tasks at once: parameters ``[T, ...]``, ``x`` ``[T, N, ...]``,
    result ``[T, N, ...]`` (see the module docstring)."""
    return compile_stacking(model)(model, params, buffers, x)


@torch.no_grad()
def update_running_stats_stacked(model: nn.Module, inputs: Tensor, chunk_size: int) -> None:
    """``batch_norm.update_running_stats`` for a stackable model: the model's own parameters on
    each task of ``inputs`` ``[T, N, ...]``, ``chunk_size`` tasks per call, statistics folded in
    task order (the same running statistics as the loop, many times faster)."""
    forward = compile_stacking(model)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    for start in range(0, inputs.shape[0], chunk_size):
        x = inputs[start:start + chunk_size]
        forward(model, stack_params(theta, x.shape[0]), buffers, x, observe=True)


__all__ = ["StackedForward", "Unstackable", "compile_stacking", "stacked_forward", "stacker",
           "stacking_problem", "update_running_stats_stacked"]
