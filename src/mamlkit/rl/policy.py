"""Gaussian MLP policies with a learned, state-independent log standard deviation.

The policy is an ordinary ``nn.Module`` so the rest of the library can call it through
``torch.func.functional_call`` with per-task adapted parameters. ``forward`` returns the mean and
the standard deviation; ``min_std`` puts a floor under the standard deviation (why
second-order meta-gradients push it down: docs/meta-rl.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlkit.functional.batching import Batching
from mamlkit.functional.task_loss import forward
from mamlkit.rl.losses import VPGLoss

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class GaussianPolicy(nn.Module):
    """``obs -> (mean, std)``: an MLP for the mean, one learned log std per action dimension."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (100, 100),
                 activation: str = "relu", init_std: float = 1.0, min_std: float = 1e-6) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown policy activation {activation!r}; "
                             f"choose {' or '.join(ACTIVATIONS)}.")
        sizes = [obs_dim, *hidden, act_dim]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.min_log_std = math.log(min_std)
        for layer in self.mean:  # Glorot-uniform weights, zero biases as in rllab's policies
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.mean(obs)
        # clamp, not softplus: above the floor the parameterisation is the paper's exp(log_std)
        std = torch.exp(torch.clamp(self.log_std, min=self.min_log_std))
        return mean, std.expand_as(mean)


class PlainGaussian:
    """``GaussianPolicy.forward`` on given tensors without ``nn.Module`` calls: the same ops in
    the same order (the same numbers), at about half the cost of a module call, which is most of
    the policy's time in sampling (one call per task and time step on 20 rows)."""

    def __init__(self, policy: GaussianPolicy, params: Mapping[str, Tensor]) -> None:
        self.layers: list[tuple[Tensor, Tensor] | Callable[[Tensor], Tensor]] = []
        for index, layer in enumerate(policy.mean):
            if isinstance(layer, nn.Linear):
                self.layers.append((params[f"mean.{index}.weight"], params[f"mean.{index}.bias"]))
            else:
                self.layers.append(_PLAIN_ACTIVATIONS[type(layer)])
        self.log_std = params["log_std"]
        self.min_log_std = policy.min_log_std
        # a copy of adapted parameters does not change: its std is computed once
        self.std = None if isinstance(self.log_std, nn.Parameter) else self._std()

    def _std(self) -> Tensor:
        return torch.exp(torch.clamp(self.log_std, min=self.min_log_std))

    def __call__(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = obs
        for layer in self.layers:
            x = F.linear(x, *layer) if isinstance(layer, tuple) else layer(x)
        return x, (self._std() if self.std is None else self.std).expand_as(x)


_PLAIN_ACTIVATIONS: dict[type[nn.Module], Callable[[Tensor], Tensor]] = {
    nn.ReLU: torch.relu, nn.Tanh: torch.tanh}


def _plain(policy: nn.Module, params: Mapping[str, Tensor]) -> PlainGaussian | None:
    """``policy``'s plain forward on ``params`` where it is a ``GaussianPolicy`` of linear
    layers and known activations (None otherwise: the module is called)."""
    if not isinstance(policy, GaussianPolicy) or not all(
            isinstance(layer, nn.Linear) or type(layer) in _PLAIN_ACTIVATIONS
            for layer in policy.mean):
        return None
    return PlainGaussian(policy, {**dict(policy.named_parameters()), **params})


class SamplingPolicy:
    """The ``obs [T, N, obs] -> (mean, std)`` callable that sampling needs, without gradients.

    ``params`` (adapted ones) carry a leading task dimension when ``batched``; called on
    ``[T, N, obs]`` the policy then runs all tasks through the functional core's ``vmap``
    batching. A plain object, not a closure, so that ``rl.workers.SamplerPool`` can pickle it to
    its workers; ``task_slice`` gives the policy of some tasks (the share a worker samples, or
    the single task that ``rl.sampling.rollout`` calls).
    """

    def __init__(self, policy: nn.Module, params: Mapping[str, Tensor] | None = None,
                 batched: bool = False) -> None:
        self.policy = policy
        self.params = None if params is None else {n: p.detach() for n, p in params.items()}
        self.batched = batched
        self.plain = None if batched else _plain(policy, self.params or {})

    def __call__(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        if torch.is_grad_enabled():  # sampling runs without; entering no_grad costs per call
            with torch.no_grad():
                return self._outputs(obs)
        return self._outputs(obs)

    def _outputs(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        if self.plain is not None:
            return self.plain(obs)
        if self.params is None:
            return self.policy(obs)
        if not self.batched:
            return forward(self.policy, self.params, {}, obs)
        return Batching("vmap").map(lambda ops, p, o: ops.forward(p, o), self.policy, {},
                                    VPGLoss(), self.params, obs, batched_params=True)

    def task_slice(self, start: int, stop: int) -> SamplingPolicy:
        """The policy of tasks ``start:stop`` with its own (fresh, aligned) copy of their
        parameters; one task's is a plain, unbatched policy (what sampling calls per task)."""
        if not self.batched or self.params is None:
            return self
        if stop - start == 1:
            one = {n: p[start] for n, p in self.params.items()}
            if _plain(self.policy, one) is not None:
                return SamplingPolicy(self.policy, one)
            return SamplingPolicy(_module_with(self.policy, one))
        return SamplingPolicy(self.policy, {n: p[start:stop].clone() for n, p in
                                            self.params.items()}, True)


def _module_with(policy: nn.Module, params: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``policy`` holding ``params``: a plain module call costs a fraction of a
    ``functional_call``, which matters at one call per task and time step."""
    module = copy.deepcopy(policy)
    with torch.no_grad():
        for name, value in module.named_parameters():
            if name in params:
                value.copy_(params[name])
    return module


def sampling_fn(policy: nn.Module, params: Mapping[str, Tensor] | None = None,
                batched: bool = False) -> SamplingPolicy:
    """The sampling callable of ``policy`` with ``params`` (see ``SamplingPolicy``)."""
    return SamplingPolicy(policy, params, batched)


def mean_std(policy: GaussianPolicy) -> float:
    """The policy's current standard deviation averaged over action dimensions (for logs)."""
    with torch.no_grad():
        return torch.exp(torch.clamp(policy.log_std, min=policy.min_log_std)).mean().item()
