"""Training-mode batch norm whose second derivative is a short closed form.

Second-order MAML differentiates the inner gradient, so every batch-norm layer of a stacked
Conv4 is differentiated twice. torch's own double backward of batch norm
(``batchnorm_double_backward``) takes some twenty passes over the activations; on the
``omniglot-5w5s`` meta-step it was 29% of the time on CPU. Here the first derivative is torch's
fused kernel (``native_batch_norm_backward``, the same bits as autograd's) and the second is the
closed form below, a handful of passes: that meta-step 1.21x faster (20-way 5-shot: 1.46x), its
meta-gradient the same up to rounding (``benchmarks/results/batch_norm_grad.md``).

The closed form, per channel, with N values, ``xhat = (x - mean) * r``, ``r = 1 / sqrt(var +
eps)``, gamma the weight, ``g`` the gradient of the output, and the backward
``dx = gamma * r * P(g)``, ``dgamma = sum(g * xhat)``, ``dbeta = sum(g)``, where
``P(v) = v - mean(v) - xhat * mean(v * xhat)``. For the gradients ``a, c_gamma, c_beta`` of
``(dx, dgamma, dbeta)``, with ``m_v = mean(v)``, ``m_vx = mean(v * xhat)`` and
``cov = mean(a * g) - m_a * m_g - m_gx * m_ax``:

    d/dg     = gamma * r * P(a) + c_gamma * xhat + c_beta
    d/dgamma = N * r * cov
    d/dx     = (c_gamma * r - gamma * r^2 * m_ax) * P(g) - gamma * r^2 * m_gx * P(a)
               - gamma * r^2 * xhat * cov

It is written with plain tensor operations, so a third derivative (``create_graph`` through a
second-order meta-gradient) is autograd's derivative of these.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Batch norm of ``x`` with its own batch statistics over every dimension but dim 1 (no
    running statistics), scaled by ``weight`` and shifted by ``bias``: ``F.batch_norm(x, None,
    None, weight, bias, True, 0.0, eps)`` with the closed-form second derivative."""
    out: Tensor = _BatchNorm.apply(x, weight, bias, eps)[0]  # type: ignore[no-untyped-call]
    return out


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector shaped to broadcast against ``x`` ([1, C, 1, ...])."""
    return t.view([1, -1] + [1] * (x.dim() - 2))


def _channel_mean(t: Tensor) -> Tensor:
    return t.mean([d for d in range(t.dim()) if d != 1], keepdim=True)


def batch_norm_double_backward(
    g: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor,
    a: Tensor | None, c_weight: Tensor | None, c_bias: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients with respect to ``(g, x, weight)`` of ``<a, dx> + <c_weight, dweight> +
    <c_bias, dbias>``, where ``(dx, dweight, dbias)`` is batch norm's backward of ``g`` at ``x``
    (``mean`` and ``rstd`` the batch's statistics); the formulas are in the module docstring."""
    n = x.numel() // x.shape[1]
    r, gamma = _channel_view(rstd, x), _channel_view(weight, x)
    xhat = (x - _channel_view(mean, x)) * r
    m_g, m_gx = _channel_mean(g), _channel_mean(g * xhat)
    p_g = g - m_g - xhat * m_gx
    gamma_r = gamma * r
    grad_g: Tensor | None = None  # the sum of the terms that are there
    grad_x: Tensor | None = None
    if c_bias is not None:
        grad_g = _channel_view(c_bias, x).expand_as(g)
    if c_weight is not None:
        c_weight = _channel_view(c_weight, x)
        grad_g = c_weight * xhat if grad_g is None else grad_g + c_weight * xhat
        grad_x = c_weight * r * p_g
    if a is None:  # dweight and dbias do not depend on weight
        return (torch.zeros_like(g) if grad_g is None else grad_g,
                torch.zeros_like(x) if grad_x is None else grad_x, torch.zeros_like(weight))
    m_a, m_ax = _channel_mean(a), _channel_mean(a * xhat)
    cov = _channel_mean(a * g) - m_a * m_g - m_gx * m_ax
    p_a = a - m_a - xhat * m_ax
    grad_g = gamma_r * p_a if grad_g is None else grad_g + gamma_r * p_a
    from_a = gamma_r * r * (m_ax * p_g + m_gx * p_a + xhat * cov)
    grad_x = -from_a if grad_x is None else grad_x - from_a
    return grad_g, grad_x, (r * n * cov).view(-1)


class _BatchNorm(torch.autograd.Function):
    """Forward: torch's fused kernel. Backward: ``_BatchNormBackward``, differentiable. Written
    with ``setup_context`` so that ``torch.func`` transforms take it too."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
        out, mean, rstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, None, None, True, 0.0, eps)
        return out, mean, rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, weight, _, eps = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps

    @staticmethod
    def backward(ctx: Any, g: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = _BatchNormBackward.apply(  # type: ignore[no-untyped-call]
            g, x, weight, mean, rstd, ctx.eps)
        return dx, dweight, dbias, None


class _BatchNormBackward(torch.autograd.Function):
    """Batch norm's first derivative as a function of ``(g, x, weight)``; its own derivative is
    ``batch_norm_double_backward`` (``mean`` and ``rstd`` are functions of ``x`` there)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                rstd: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            g, x, weight, None, None, mean, rstd, True, eps, [True, True, True])
        return dx, dweight, dbias

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        g, x, weight, mean, rstd, _ = inputs
        ctx.save_for_backward(g, x, weight, mean, rstd)

    @staticmethod
    def backward(ctx: Any, a: Tensor | None, c_weight: Tensor | None,
                 c_bias: Tensor | None) -> tuple[Tensor | None, ...]:
        g, x, weight, mean, rstd = ctx.saved_tensors
        grad_g, grad_x, grad_weight = batch_norm_double_backward(
            g, x, weight, mean, rstd, a, c_weight, c_bias)
        return grad_g, grad_x, grad_weight, None, None, None
