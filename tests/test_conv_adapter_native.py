"""Conv-Adapter's fused grouped-conv kernel (petl._grouped_conv_native) is conv1's function: same outputs and
input / weight / bias gradients as ``nn.Conv2d`` (float64 to rounding, float32 to 1e-5) on the adapter shapes of
EfficientNet-Lite0 and ResNet (adapt_size 1-16, kernel 1-5, stride 1-2, odd and even sizes, with and without
bias), deterministic, and taken exactly where it applies."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch import nn

from petl import _grouped_conv_native, _native
from petl.methods.conv_adapter import ConvAdapter

CHANNELS_LAST = torch.channels_last


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the fused kernels cannot be built here (the torch forms are used)")
    assert _native.native_module() is not None, "a C++ compiler is present but the fused kernels did not build"


def _conv(channels: int, adapt_size: int, kernel: int, stride: int, bias: bool, dtype: torch.dtype) -> nn.Conv2d:
    torch.manual_seed(channels + kernel + stride)
    conv = nn.Conv2d(channels, channels // adapt_size, kernel, stride, kernel // 2, groups=channels // adapt_size,
                     bias=bias).to(dtype)
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    return conv


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], upstream: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(out, inputs, upstream)


CASES = [  # channels, adapt_size, kernel, stride, size, bias
    (32, 16, 3, 1, 12, True),     # Lite0's first block (2 groups), stride 1
    (96, 16, 3, 2, 11, True),     # stride 2 on an odd size
    (144, 16, 5, 2, 10, True),    # 5 x 5, stride 2 on an even size
    (64, 8, 3, 1, 7, False),      # ResNet's adapt_size 8, no bias
    (48, 4, 5, 1, 6, True),
    (24, 8, 1, 1, 5, True),       # 1 x 1 kernel
    (16, 1, 3, 2, 4, True),       # one input channel per group
    (1152, 16, 3, 1, 2, True),    # Lite0's widest, 2 x 2 map (every tap partly off the edge)
]


@pytest.mark.parametrize("channels, adapt_size, kernel, stride, size, bias", CASES)
def test_fused_kernel_equals_the_grouped_conv_in_float64(channels, adapt_size, kernel, stride, size, bias):
    conv = _conv(channels, adapt_size, kernel, stride, bias, torch.float64)
    x = torch.randn(3, channels, size, size, dtype=torch.float64).contiguous(memory_format=CHANNELS_LAST)
    x.requires_grad_()
    assert _grouped_conv_native.applies(conv, x)
    fused, plain = _grouped_conv_native.grouped_conv(conv, x), conv(x)
    assert fused.shape == plain.shape and fused.is_contiguous(memory_format=CHANNELS_LAST)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-12)
    inputs = [x, conv.weight] + ([conv.bias] if bias else [])
    upstream = torch.randn_like(plain)
    for got, want in zip(_grads(fused, inputs, upstream), _grads(plain, inputs, upstream)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_fused_kernel_in_float32_on_a_lite0_shape_and_deterministic():
    """float32 outputs and gradients within 1e-5 of the largest value of the float64 result (the weight gradient
    sums 6,272 terms per entry), and bitwise the same on a second call."""
    conv = _conv(144, 16, 3, 1, True, torch.float32)
    x = torch.randn(8, 144, 28, 28).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    upstream = torch.randn(8, 9, 28, 28).contiguous(memory_format=CHANNELS_LAST)
    inputs = [x, conv.weight, conv.bias]
    fused = _grouped_conv_native.grouped_conv(conv, x)
    first = _grads(fused, inputs, upstream)
    conv64 = copy.deepcopy(conv).double()
    x64 = x.detach().double().requires_grad_()
    exact = conv64(x64)
    exact_grads = _grads(exact, [x64, conv64.weight, conv64.bias], upstream.double())
    for got, want in zip((fused, *first), (exact, *exact_grads)):
        assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()
    again = _grads(_grouped_conv_native.grouped_conv(conv, x), inputs, upstream)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_only_the_gradients_asked_for_are_computed():
    conv = _conv(32, 8, 3, 1, True, torch.float64).requires_grad_(False)
    conv.weight.requires_grad_()
    x = torch.randn(2, 32, 6, 6, dtype=torch.float64).contiguous(memory_format=CHANNELS_LAST)
    fused, plain = _grouped_conv_native.grouped_conv(conv, x), conv(x)
    upstream = torch.randn_like(plain)
    torch.testing.assert_close(_grads(fused, [conv.weight], upstream)[0], _grads(plain, [conv.weight], upstream)[0],
                               rtol=0, atol=1e-10)


def test_applies_only_to_channels_last_float_cpu_calls():
    conv = _conv(32, 8, 3, 1, True, torch.float32)
    x = torch.randn(2, 32, 6, 6)
    assert not _grouped_conv_native.applies(conv, x)                                    # contiguous
    assert _grouped_conv_native.applies(conv, x.contiguous(memory_format=CHANNELS_LAST))
    assert not _grouped_conv_native.applies(conv, x.half().contiguous(memory_format=CHANNELS_LAST))
    dilated = nn.Conv2d(32, 4, 3, padding=2, dilation=2, groups=4)
    assert not _grouped_conv_native.applies(dilated, x.contiguous(memory_format=CHANNELS_LAST))
    reflect = nn.Conv2d(32, 4, 3, padding=1, groups=4, padding_mode="reflect")
    assert not _grouped_conv_native.applies(reflect, x.contiguous(memory_format=CHANNELS_LAST))


def test_adapter_takes_the_fused_kernel_on_channels_last_and_steps_aside_when_disabled(monkeypatch):
    adapter = ConvAdapter(32, 32, 8, 3, 1)
    x = torch.randn(2, 32, 40, 40)
    fused = adapter.grouped_conv(x.contiguous(memory_format=CHANNELS_LAST))
    assert type(fused.grad_fn).__name__.startswith("_GroupedConv")
    assert not type(adapter.grouped_conv(x).grad_fn).__name__.startswith("_GroupedConv")   # contiguous input
    torch.testing.assert_close(fused, adapter.conv1(x), rtol=1e-5, atol=1e-5)
    monkeypatch.setitem(_native._loaded, "module", None)                                 # PETL_NATIVE_KERNELS=0
    plain = adapter.grouped_conv(x.contiguous(memory_format=CHANNELS_LAST))
    assert not type(plain.grad_fn).__name__.startswith("_GroupedConv")
    torch.testing.assert_close(plain, fused, rtol=1e-5, atol=1e-5)


def test_hooked_conv1_on_channels_last_is_still_called_as_a_module():
    adapter = ConvAdapter(16, 16, 8)
    seen = []
    adapter.conv1.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    adapter(torch.randn(2, 16, 5, 5).contiguous(memory_format=CHANNELS_LAST))
    assert seen == [(2, 2, 5, 5)]
