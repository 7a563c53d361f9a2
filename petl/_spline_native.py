"""The linear spline unit's fused CPU kernels (``petl/csrc/spline_cpu.cpp``; built and loaded by
``petl._native``, which says why they exist and what happens where they cannot be built).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _native
from ._spline_function import SplineFunction, clamp_above, reference_grads


def applies(x: Tensor, coefficients: Tensor) -> bool:
    """True where the fused kernel handles this call (``petl._native.applies`` for a (C, K) knot table)."""
    return _native.applies(x, coefficients, coefficients.shape[0])


class NativeSplineFunction(torch.autograd.Function):
    """min(relu(x) + spline(x), upper) by the fused kernels (``upper`` = inf: no clamp).

    Outputs equal ``SplineFunction`` (then ``clamp(max=upper)``) bitwise; input gradients equal it; the
    coefficient gradient is summed in the input's precision over chunks of 1024 elements and in float64 across
    chunks and threads, so it is at least as accurate as the autograd form's float32 sums
    (tests/test_activation_fast_forms.py). A double backward replays the autograd form.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, coefficients: Tensor, knot_range: float, step: float,
                upper: float) -> Tensor:
        coefficients_c = coefficients.detach().contiguous()
        inner = _native.inner(x, coefficients.shape[0])
        ctx.save_for_backward(x, coefficients)
        ctx.settings = (inner, knot_range, step, upper)
        return _native.native_module().spline_forward(x.detach(), coefficients_c, inner, knot_range, step, upper)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, coefficients = ctx.saved_tensors
        inner, knot_range, step, upper = ctx.settings
        need_x, need_c = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():                          # create_graph=True: differentiate the autograd form
            return reference_grads(x, coefficients, knot_range, step, grad, (need_x, need_c), upper) + (
                None, None, None)
        grad = _native.grad_like(grad, x)
        grad_x, grad_c = _native.native_module().spline_backward(
            x.detach(), coefficients.detach().contiguous(), grad, inner, knot_range, step, upper, need_x, need_c)
        return (grad_x if need_x else None, grad_c.view_as(coefficients) if need_c else None, None, None, None)


def spline(x: Tensor, coefficients: Tensor, knot_range: float, step: float, upper: float = math.inf) -> Tensor:
    """min(relu(x) + spline(x), upper): the fused kernel where it applies, else the autograd form."""
    if applies(x, coefficients):
        return NativeSplineFunction.apply(x, coefficients, knot_range, step, upper)
    out = SplineFunction.apply(x, coefficients, knot_range, step)
    return clamp_above(out, upper)
