"""Exact fast form of the linear spline unit (``petl.activations.LinearSplineUnit``): a custom autograd Function.

Kept apart from ``petl.activations`` (which defines the units and their parameters) because it is an
implementation of one unit's arithmetic, not a candidate: the plain autograd form it replaces is the reference in
tests/test_activation_fast_forms.py, which checks outputs and input / parameter gradients against it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _channel_view(p: Tensor, x: Tensor) -> Tensor:
    """View a (C,) tensor so it broadcasts over dim 1 of ``x`` (as ``petl.activations`` does for parameters)."""
    return p.view((1, -1) + (1,) * (x.dim() - 2)) if x.dim() >= 2 else p


def clamp_above(out: Tensor, upper: float) -> Tensor:
    """min(out, upper), or ``out`` itself for upper = inf: the ReLU6 slot's clamp on a unit's plain form."""
    return out if math.isinf(upper) else out.clamp(max=upper)


# Float -> integer without a conversion kernel: for an integer-valued float 0 <= f < 2 ** mantissa_bits, the bits
# of f + 2 ** mantissa_bits are those of the constant below plus f. Exact; a plain ``.long()`` is a slow
# scalar loop on CPU and costs more than the rest of the unit's forward.
_INTEGER_BITS = {torch.float32: (2.0 ** 23, torch.int32, 0x4B000000), torch.float64: (2.0 ** 52, torch.int64,
                                                                                      0x4330000000000000)}


def _memory_order(t: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """A 1-D view of ``t`` in memory order (no copy for contiguous or channels_last) and the inverse reshape.

    Element-wise lookups and the sums of the coefficient gradient do not care about element order; reading
    memory order avoids the copy that ``reshape(-1)`` makes of a channels_last tensor.
    """
    if t.is_contiguous():
        return t.view(-1), lambda flat: flat.view(t.shape)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        perm = t.permute(0, 2, 3, 1)
        return perm.reshape(-1), lambda flat: flat.view(perm.shape).permute(0, 3, 1, 2)
    return t.reshape(-1), lambda flat: flat.view(t.shape)


def _flat_like(t: Tensor, like: Tensor) -> Tensor:
    """``t`` flattened in the element order of ``_memory_order(like)`` (same shape, possibly other strides)."""
    if t.stride() == like.stride():
        return _memory_order(t)[0]
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)        # like's memory order is N, H, W, C
    return t.reshape(-1)                                 # like's order is the logical one


def _spline_segments(x: Tensor, coefficients: Tensor, knot_range: float, step: float) -> tuple[Tensor, Tensor]:
    """Left knot index into the flattened (C, K) coefficients and the fraction in [0, 1) of each element.

    Same arithmetic as the plain form (tests/test_activation_fast_forms.py); the index is int32 for float32
    input (float64: int64), obtained from the float knot position by ``_INTEGER_BITS`` with the channel offset
    added in float (exact: C * K < 2 ** 23).
    """
    channels, k = coefficients.shape
    u = x.add(knot_range).div_(step)                          # position in knot units, knot i at u = i
    left = u.floor().clamp_(0, k - 2)                          # left knot of the segment (end ones extrapolate)
    frac = u.sub_(left)
    magic = _INTEGER_BITS.get(left.dtype)
    if magic is None:                                          # half precision: the plain conversion
        if channels > 1:
            left = left.float() + _channel_view(torch.arange(channels, device=x.device) * k, x)
        return left.long(), frac
    base, int_dtype, bits = magic
    shift = torch.arange(channels, device=x.device, dtype=left.dtype) * k + base
    left.add_(_channel_view(shift, x) if channels > 1 else shift)
    return left.view(int_dtype).sub_(bits), frac


def _sum_at(size: int, index: Tensor, values: Tensor) -> Tensor:
    """out[j] = sum of values[index == j]: ``index_add_``, or on CUDA under
    ``torch.use_deterministic_algorithms(True)`` the deterministic ``index_put_(accumulate=True)`` (CUDA's
    ``index_add_`` adds atomically, in no fixed order)."""
    out = torch.zeros(size, dtype=values.dtype, device=values.device)
    if values.is_cuda and torch.are_deterministic_algorithms_enabled():
        return out.index_put_((index.long(),), values, accumulate=True)
    return out.index_add_(0, index, values)


class SplineFunction(torch.autograd.Function):
    """relu(x) + linear interpolation of per-channel knot values, with a hand-written backward.

    Same arithmetic as the autograd form ``relu(x) + (c[i] + frac * (c[i + 1] - c[i]))`` (tests keep that form
    as the reference and check outputs and all gradients against it). What makes it faster on CPU: no
    float -> int64 conversion (``_INTEGER_BITS``), one int32 index instead of three int64 tensors (``i``,
    ``i + 1``, channel offset), the slope table ``c[i + 1] - c[i]`` built on the (C, K) table, lookups by
    ``index_select`` on a flat view (several times faster than ``take``), in-place arithmetic, and the
    coefficient gradient as two ``index_add_`` calls instead of the serial ``put_(accumulate=True)`` behind
    ``take``'s backward. A double backward (``create_graph=True``) replays the autograd form.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, coefficients: Tensor, knot_range: float, step: float) -> Tensor:
        index, frac = _spline_segments(x, coefficients, knot_range, step)
        slopes = torch.cat([coefficients.diff(dim=1), coefficients.new_zeros(coefficients.shape[0], 1)], 1)
        flat_index, unflatten = _memory_order(index)
        slope = unflatten(slopes.reshape(-1).index_select(0, flat_index))                       # c[i + 1] - c[i]
        out = (frac * slope).add_(unflatten(coefficients.reshape(-1).index_select(0, flat_index)))   # + c[i]
        ctx.save_for_backward(x, coefficients, index, frac, slope)
        ctx.knot_range, ctx.step = knot_range, step
        return F.relu(x) + out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, coefficients, index, frac, slope = ctx.saved_tensors
        if torch.is_grad_enabled():                              # create_graph=True: differentiate the autograd form
            return reference_grads(x, coefficients, ctx.knot_range, ctx.step, grad, ctx.needs_input_grad[:2]) + (
                None, None)
        grad_x = grad_c = None
        if ctx.needs_input_grad[0]:
            # rounded where autograd rounds the plain form (bf16 input, float32 coefficients: at frac and relu(x))
            through_spline = (grad * slope).to(frac.dtype).div_(ctx.step)
            grad_x = through_spline.add_(torch.ops.aten.threshold_backward(grad.to(x.dtype), x, 0)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            # d out / d c[i] = 1 - frac, d out / d c[i + 1] = frac: sum(g) - sum(g frac) on i, sum(g frac) on i + 1
            flat_index = _memory_order(index)[0]
            weight_right = grad * frac
            size = coefficients.numel()
            acc = torch.promote_types(grad.dtype, coefficients.dtype)
            total = _sum_at(size, flat_index, _flat_like(grad, index).to(acc))
            right = _sum_at(size, flat_index, _flat_like(weight_right, index).to(acc))
            total -= right
            total[1:] += right[:-1]                              # i + 1 stays inside the channel's row (i <= K - 2)
            grad_c = total.view_as(coefficients).to(coefficients.dtype)
        return grad_x, grad_c, None, None


def reference_grads(x: Tensor, coefficients: Tensor, knot_range: float, step: float, grad: Tensor,
                    needs: tuple[bool, bool], upper: float = math.inf) -> tuple[Tensor | None, Tensor | None]:
    """(d x, d coefficients) of min(spline(x), upper) by differentiating the autograd form with
    ``create_graph=True``: the double backward of both fast forms (``None`` where ``needs`` says not wanted)."""
    out = clamp_above(_spline_reference(x, coefficients, knot_range, step), upper)
    return differentiable_grads(out, (x, coefficients), needs, grad)


def differentiable_grads(out: Tensor, inputs: Sequence[Tensor], needs: Sequence[bool],
                         grad: Tensor) -> tuple[Tensor | None, ...]:
    """d out / d input for each input that ``needs`` asks for (None for the others), with ``create_graph=True``:
    how a fused unit's backward answers a double backward, by differentiating its plain form."""
    wanted = [t for t, need in zip(inputs, needs) if need]
    grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
    return tuple(next(grads) if need else None for need in needs)


def _spline_reference(x: Tensor, coefficients: Tensor, knot_range: float, step: float) -> Tensor:
    """The spline in plain autograd ops (used for double backward only)."""
    channels, k = coefficients.shape
    u = (x + knot_range) / step
    idx = u.detach().floor().clamp_(0, k - 2).long()
    frac = u - idx.to(u.dtype)
    if channels > 1:
        idx = idx + _channel_view(torch.arange(channels, device=x.device) * k, x)
    values = coefficients.reshape(-1)
    left, right = values.take(idx), values.take(idx + 1)
    return F.relu(x) + (left + frac * (right - left))
