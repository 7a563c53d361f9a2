"""Conv-Adapter's grouped k x k conv as one fused CPU kernel per direction (``petl/csrc/grouped_conv_cpu.cpp``;
built and loaded by ``petl._native``; the C++ file says why it exists).

``grouped_conv(conv, x)`` is ``conv(x)`` for a plain ``nn.Conv2d`` whose groups each map adapt_size input channels
to one output channel. ``applies`` says where the kernel handles a call: CPU, float32 / float64, a channels_last
input, square kernel / stride / padding, dilation 1, numeric padding. Outputs and gradients equal the conv's up to
the order of float additions (checked in tests/test_conv_adapter_native.py); a double backward is not supported
(the backward is not itself differentiable), which no trainer here uses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import _native


def applies(conv: nn.Conv2d, x: Tensor) -> bool:
    """True where the fused kernel computes ``conv(x)``: see the module docstring."""
    square = (len(set(conv.kernel_size)) == 1 and len(set(conv.stride)) == 1
              and isinstance(conv.padding, tuple) and len(set(conv.padding)) == 1)
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and x.dtype == conv.weight.dtype and conv.weight.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last) and x.numel() > 0
            and square and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
            and conv.out_channels == conv.groups and conv.in_channels % conv.groups == 0
            and _native.native_module() is not None)


def grouped_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` through the fused kernel (the caller has checked ``applies``); channels_last output."""
    return _GroupedConv.apply(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0])


class _GroupedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding)
        ctx.has_bias = bias is not None
        return _native.native_module().grouped_conv_forward(x, weight.contiguous(), bias, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx = dw = None
        if need_x or need_weight:
            dx, dw = _native.native_module().grouped_conv_backward(x, weight.contiguous(), grad, *ctx.geometry,
                                                                   need_x, need_weight)
        db = grad.sum(dim=(0, 2, 3)) if need_bias and ctx.has_bias else None
        return dx, dw, db, None, None   # the kernel returns None for a gradient not asked for
