"""Finn et al. 2017: y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi]."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mamlkit.functional.seeding import generator_from
from mamlkit.functional.task_batch import TaskBatch
from mamlkit.models.mlp import mlp
from mamlkit.registry import TaskSpec, register


@dataclass(frozen=True)
class Sinusoid:
    """K support and K query points per task with x ~ U[-5, 5]; the loss is mean squared error."""

    shots: int = 10
    query_shots: int | None = None
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    loss: str = "mse"
    metric: str = "mse"

    def sample_parameters(
        self, num_tasks: int, generator: torch.Generator | int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes and phases of ``num_tasks`` tasks, each of shape ``[tasks]``."""
        g = generator_from(generator)
        amp = torch.empty(num_tasks).uniform_(*self.amplitude, generator=g)
        phase = torch.empty(num_tasks).uniform_(*self.phase, generator=g)
        return amp, phase

    def sample(self, num_tasks: int, generator: torch.Generator | int | None = None) -> TaskBatch:
        return self.sample_with_parameters(num_tasks, generator)[0]

    def sample_with_parameters(
        self, num_tasks: int, generator: torch.Generator | int | None = None
    ) -> tuple[TaskBatch, torch.Tensor, torch.Tensor]:
        """Tasks plus their amplitudes and phases, so that plots can draw the true functions."""
        g = generator_from(generator)
        amp, phase = self.sample_parameters(num_tasks, g)
        query_shots = self.shots if self.query_shots is None else self.query_shots
        x = torch.empty(num_tasks, self.shots + query_shots, 1).uniform_(*self.x_range, generator=g)
        y = amp[:, None, None] * torch.sin(x - phase[:, None, None])
        k = self.shots
        return TaskBatch(support=(x[:, :k], y[:, :k]), query=(x[:, k:], y[:, k:])), amp, phase

    @staticmethod
    def function(x: torch.Tensor, amp: float, phase: float) -> torch.Tensor:
        """The true function of one task, for plots."""
        return amp * torch.sin(x - phase)


def _from_config(config, split: str) -> Sinusoid:
    """The same distribution for every split (fresh draws, from the caller's seed)."""
    return Sinusoid(shots=config.shots, query_shots=config.query_shots)


def _network(config, tasks: Sinusoid) -> nn.Module:
    """The paper's MLP from x to y, with ``hidden`` layer widths."""
    return mlp([1, *config.hidden, 1])


register(TaskSpec(name="sinusoid", build=_from_config, network=_network, models=("mlp",),
                  metric="mse", figure="function",
                  doc="regression of y = A sin(x - phase) from K points (Finn et al. 2017)"))
