"""The rational and ACON-C units' arithmetic: their plain autograd forms and fused CPU kernels
(``petl/csrc/units_cpu.cpp``; built and loaded by ``petl._native``, which says why they exist).

``rational`` and ``acon_c`` take the fused kernel where it applies (CPU, float32 / float64, contiguous or
channels_last) and the plain form elsewhere. The plain forms are the definitions: the kernels compute the same
expressions with closed-form backwards, checked against them in tests/test_activation_fast_forms.py (outputs and
gradients to 1e-6); a double backward (``create_graph=True``) differentiates the plain form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _native
from ._spline_function import _channel_view, clamp_above, differentiable_grads


def rational_plain(x: Tensor, numerator: Tensor, denominator: Tensor) -> Tensor:
    """R(x) = (a0 + a1 x + ... + a5 x^5) / (1 + |b1| |x| + ... + |b4| |x|^4), per channel along dim 1 (Horner)."""
    a = [_channel_view(numerator[:, i], x) for i in range(numerator.shape[1])]
    b = [_channel_view(denominator[:, i], x) for i in range(denominator.shape[1])]
    p = a[-1]
    for coef in reversed(a[:-1]):
        p = p * x + coef
    ax = x.abs()
    q = b[-1].abs()
    for coef in reversed(b[:-1]):
        q = q * ax + coef.abs()
    return p / (1 + q * ax)


def continued_rational_plain(x: Tensor, numerator: Tensor, denominator: Tensor, fit_range: float) -> Tensor:
    """R(clamp(x, -c, c)) + relu(x - c): the rational unit's function (``petl.activations.RationalUnit``)."""
    return rational_plain(x.clamp(-fit_range, fit_range), numerator, denominator) + F.relu(x - fit_range)


def acon_plain(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """(p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x, per channel along dim 1."""
    p1, p2, beta = (_channel_view(t, x) for t in (p1, p2, beta))
    d = (p1 - p2) * x
    return d * torch.sigmoid(beta * d) + p2 * x


@dataclass(frozen=True)
class _Kernel:
    """How one unit maps onto its kernels ``{name}_forward`` / ``{name}_backward``: the (P, C) parameter table
    they read, how its gradient splits back into the parameters, and the plain form (for double backward).
    ``constants`` (the kernels' trailing float arguments, the upper clamp last) are passed per call."""

    name: str
    pack: Callable[..., Tensor]
    unpack: Callable[[Tensor, Sequence[Tensor]], list[Tensor]]
    plain: Callable[..., Tensor]          # plain(x, *params, *constants[:-1])


class _FusedUnit(torch.autograd.Function):
    """min(unit(x), upper) by a fused kernel: ``apply(x, kernel, constants, *params)``.

    The parameter gradients come back from the kernel as rows of the table, summed in float64 within and across
    blocks and threads (deterministic for a fixed thread count)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: _Kernel, constants: tuple[float, ...], *params: Tensor) -> Tensor:
        table = kernel.pack(*(p.detach() for p in params))
        inner = _native.inner(x, table.shape[1])
        ctx.save_for_backward(x, table, *params)
        ctx.kernel, ctx.constants, ctx.inner = kernel, constants, inner
        return getattr(_native.native_module(), f"{kernel.name}_forward")(x.detach(), table, inner, *constants)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, table, *params = ctx.saved_tensors
        kernel, constants = ctx.kernel, ctx.constants
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[3:]
        if torch.is_grad_enabled():                          # create_graph=True: differentiate the plain form
            out = clamp_above(kernel.plain(x, *params, *constants[:-1]), constants[-1])
            grad_x, *grad_params = differentiable_grads(out, (x, *params), (need_x, *need_params), grad)
            return (grad_x, None, None, *grad_params)
        grad_x, grad_table = getattr(_native.native_module(), f"{kernel.name}_backward")(
            x.detach(), table, _native.grad_like(grad, x), ctx.inner,
            *constants, need_x, any(need_params))
        grads = kernel.unpack(grad_table, params) if any(need_params) else [None] * len(params)
        return (grad_x if need_x else None, None, None, *(g if need else None for g, need in zip(grads, need_params)))


_RATIONAL = _Kernel("rational",
                    pack=lambda a, b: torch.cat((a.t(), b.t())).contiguous(),
                    # the kernel's denominator rows are gradients with respect to |b_k|: times sign(b_k)
                    unpack=lambda g, ps: [g[:6].t().reshape(ps[0].shape),
                                          (g[6:].t() * ps[1].sign()).reshape(ps[1].shape)],
                    plain=continued_rational_plain)
_ACON = _Kernel("acon",
                pack=lambda a, b, c: torch.stack((a, b, c)).contiguous(),
                unpack=lambda g, ps: [g[i].reshape(p.shape) for i, p in enumerate(ps)],
                plain=acon_plain)


def rational(x: Tensor, numerator: Tensor, denominator: Tensor, fit_range: float, upper: float = math.inf) -> Tensor:
    """min(R(clamp(x, -c, c)) + relu(x - c), upper); numerator (C, 6), denominator (C, 4)."""
    if denominator.dtype == numerator.dtype and _native.applies(x, numerator, numerator.shape[0]):
        return _FusedUnit.apply(x, _RATIONAL, (float(fit_range), float(upper)), numerator, denominator)
    return clamp_above(continued_rational_plain(x, numerator, denominator, fit_range), upper)


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor, upper: float = math.inf) -> Tensor:
    """min(ACON-C(x), upper); p1, p2, beta of shape (C,)."""
    if p2.dtype == beta.dtype == p1.dtype and _native.applies(x, p1, p1.shape[0]):
        return _FusedUnit.apply(x, _ACON, (float(upper),), p1, p2, beta)
    return clamp_above(acon_plain(x, p1, p2, beta), upper)
