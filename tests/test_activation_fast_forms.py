"""The fast forms of the learnable activation units equal their plain autograd forms.

The reference forms below are the units' previous ``forward`` bodies, written in plain differentiable torch ops;
they live here (not in the library) as the specification the fast forms are checked against: same outputs and
same input and parameter gradients to 1e-6 on the feature-map shapes of EfficientNet-Lite0 / ResNet at 64 px,
contiguous and channels_last, plus exact first and second derivatives by finite differences in float64.
"""

from __future__ import annotations

import copy
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from petl._spline_function import _channel_view as _per_channel
from petl.activations import AconCUnit, LinearSplineUnit, RationalUnit

# (N, C, H, W) of GPAF sites: Lite0 at 64 px (stem 32 ch at 32 x 32, expanded 96 ch at 16 x 16, 1152 ch at 2 x 2)
SHAPES = [(8, 32, 32, 32), (8, 96, 16, 16), (8, 1152, 2, 2)]


def spline_reference(unit: LinearSplineUnit, x: Tensor) -> Tensor:
    c = unit.coefficients
    channels, k = c.shape
    u = (x + unit.knot_range) / unit.step
    idx = u.detach().floor().clamp_(0, k - 2).long()
    frac = u - idx.to(u.dtype)
    if channels > 1:
        offset = torch.arange(channels, device=x.device) * k
        idx = idx + _per_channel(offset, x)
    left = c.reshape(-1).take(idx)
    right = c.reshape(-1).take(idx + 1)
    return F.relu(x) + (left + frac * (right - left))


def acon_reference(unit: AconCUnit, x: Tensor) -> Tensor:
    p1, p2, beta = (_per_channel(t, x) for t in (unit.p1, unit.p2, unit.beta))
    d = (p1 - p2) * x
    return d * torch.sigmoid(beta * d) + p2 * x


def _trained_like(unit: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its init (at init the spline is ReLU and half the gradient terms vanish)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unit.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return unit


def _input(shape: tuple[int, ...], channels_last: bool, seed: int) -> Tensor:
    x = 2.5 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))   # reaches beyond [-3, 3]
    x[0, :4, 0, 0] = torch.tensor([0.0, -3.0, 3.0, 0.3])                             # on the knots and the kink
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def _grads(unit: torch.nn.Module, fn, x: Tensor, g: Tensor) -> tuple[Tensor, list[Tensor]]:
    out = fn(unit, x)
    return out, list(torch.autograd.grad(out, [x] + list(unit.parameters()), g))


def _compare(unit: torch.nn.Module, reference, x: Tensor) -> None:
    """Float64: fast == reference to 1e-6 in outputs and every gradient (both are the same math; in float64 the
    order of the parameter gradients' sums over ~1e5 elements does not matter). Float32: outputs and input
    gradients to 1e-6; the parameter gradients are sums of up to 2.6e5 float32 terms, whose rounding error
    (~1e-3 absolute against float64) depends on the summation order, so there the fast form is held to 1e-5
    relative of the float64 value."""
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    names = ["input"] + [n for n, _ in unit.named_parameters()]
    fast, fast_grads = _grads(unit, type(unit).__call__, x, g)
    ref, ref_grads = _grads(unit, reference, x, g)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_grads[0], ref_grads[0], rtol=0, atol=1e-6)
    unit64, x64 = unit.double(), x.detach().double().requires_grad_()
    fast64, fast64_grads = _grads(unit64, type(unit).__call__, x64, g.double())
    ref64, ref64_grads = _grads(unit64, reference, x64, g.double())
    torch.testing.assert_close(fast64, ref64, rtol=0, atol=1e-6)
    for name, a, b, a32 in zip(names, fast64_grads, ref64_grads, fast_grads):
        assert b.abs().max() > 0, f"{name} gradient is zero: the comparison would be vacuous"
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m: f"{name} gradient (float64) {m}")
        if name == "input":     # checked in float32 above; an element next to a knot may change segment in float64
            continue
        scale = 1e-5 * b.abs().max().item()
        torch.testing.assert_close(a32.double(), b, rtol=0, atol=scale, msg=f"{name} gradient (float32 fast)")
        # (the float32 reference is not held to this: its scatter-add through take's backward sums in an order
        # that varies from run to run, and it has been seen just outside 1e-5 -- torch's rounding, not petl's)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_spline_fast_form_equals_reference(shape, per_channel, channels_last):
    unit = _trained_like(LinearSplineUnit(shape[1] if per_channel else 1), seed=shape[1])
    x = _input(shape, channels_last, seed=shape[2])
    _compare(unit, spline_reference, x)
    with torch.no_grad():                               # the forward is the same arithmetic: bitwise equal
        assert torch.equal(unit(x), spline_reference(unit, x))


def test_spline_exact_relu_and_zero_gradient_at_init():
    unit = LinearSplineUnit(4)
    x = _input((2, 4, 5, 5), False, seed=0)
    y = unit(x)
    assert torch.equal(y, x.relu())
    y.sum().backward()
    torch.testing.assert_close(x.grad, (x > 0).float())
    # d/dc of sum(out): each element puts (1 - frac) on its left knot and frac on its right knot
    assert unit.coefficients.grad.sum().item() == pytest.approx(x.numel(), rel=1e-6)


def test_spline_first_and_second_derivatives_float64():
    unit = _trained_like(LinearSplineUnit(3, knots=7, knot_range=2.0), seed=3).double()
    x = (2.0 * torch.randn(2, 3, 4, 4, dtype=torch.float64)).requires_grad_()
    fn = lambda x, c: _apply_spline(unit, x, c)
    assert torch.autograd.gradcheck(fn, (x, unit.coefficients))
    assert torch.autograd.gradgradcheck(fn, (x, unit.coefficients))


def _apply_spline(unit: LinearSplineUnit, x: Tensor, c: Tensor) -> Tensor:
    from petl._spline_function import SplineFunction
    return SplineFunction.apply(x, c, unit.knot_range, unit.step)


def test_spline_input_without_grad_and_vector_inputs():
    unit = _trained_like(LinearSplineUnit(6), seed=5)
    x = torch.randn(10, 6) * 3                         # (N, C) vectors, as after pooling
    y = unit(x)
    torch.testing.assert_close(y, spline_reference(unit, x), rtol=0, atol=1e-6)
    y.sum().backward()
    ref_c = unit.coefficients.detach().clone().requires_grad_()
    unit_ref = LinearSplineUnit(6)
    unit_ref.coefficients = torch.nn.Parameter(ref_c)
    spline_reference(unit_ref, x).sum().backward()
    torch.testing.assert_close(unit.coefficients.grad, unit_ref.coefficients.grad, rtol=0, atol=1e-5)


def _mixed_precision_case(device: str) -> None:
    """bf16 activations with float32 coefficients (CUDA autocast): same dtypes and values as the plain form."""
    unit = _trained_like(LinearSplineUnit(96), seed=7).to(device)
    x = _input((4, 96, 8, 8), True, seed=8).detach().to(device=device, dtype=torch.bfloat16).requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(9)).to(device)
    fast, fast_grads = _grads(unit, type(unit).__call__, x, g)
    ref, ref_grads = _grads(unit, spline_reference, x, g)
    assert fast.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
    assert fast_grads[0].dtype == torch.bfloat16
    torch.testing.assert_close(fast_grads[0], ref_grads[0], rtol=0, atol=0)
    scale = 1e-5 * ref_grads[1].abs().max().item()
    torch.testing.assert_close(fast_grads[1], ref_grads[1], rtol=0, atol=scale)


def test_spline_fast_form_mixed_precision_cpu():
    _mixed_precision_case("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_spline_fast_form_on_cuda_matches_reference():
    unit = _trained_like(LinearSplineUnit(32), seed=11).cuda()
    x = _input((8, 32, 16, 16), True, seed=12).detach().cuda().requires_grad_()
    g = torch.randn(x.shape, device="cuda")
    fast, fast_grads = _grads(unit, type(unit).__call__, x, g)
    ref, ref_grads = _grads(unit, spline_reference, x, g)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_grads[0], ref_grads[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_grads[1], ref_grads[1], rtol=0, atol=1e-5 * ref_grads[1].abs().max().item())
    _mixed_precision_case("cuda")


def test_spline_fast_form_on_strided_inputs_and_gradients():
    """A transposed (N, C) input (its index tensor inherits the strides) with an expanded gradient, and a
    channels_last input with a contiguous gradient: the gradient sums pair each element with its own index."""
    unit = _trained_like(LinearSplineUnit(5), seed=13)
    for x, g in ((torch.randn(5, 40).t() * 3, torch.ones(1, 1).expand(40, 5)),
                 (_input((2, 5, 4, 4), True, seed=14).detach(), torch.randn(2, 5, 4, 4))):
        x = x.requires_grad_()
        fast = torch.autograd.grad(unit(x), [x, unit.coefficients], g)
        ref = torch.autograd.grad(spline_reference(unit, x), [x, unit.coefficients], g)
        torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(fast[1], ref[1], rtol=1e-5, atol=1e-5)


# --- the spline's fused CPU kernel (petl._spline_native): where it applies, fused clamp, derivatives ------------

def _native():
    import shutil
    from petl import _native, _spline_native
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the fused kernels cannot be built here (the autograd forms are used)")
    assert _native.native_module() is not None, "a C++ compiler is present but the fused kernels did not build"
    return _spline_native


def test_fused_kernel_handles_cpu_float_inputs_and_leaves_the_rest_to_the_autograd_form():
    native = _native()
    coef = torch.zeros(96, 21)
    x = torch.randn(2, 96, 4, 4)
    assert native.applies(x, coef) and native.applies(x.contiguous(memory_format=torch.channels_last), coef)
    assert native.applies(x.double(), coef.double()) and native.applies(torch.randn(3, 96), coef)
    assert not native.applies(x.bfloat16(), coef)                    # autocast activations: SplineFunction
    assert not native.applies(torch.randn(96, 3).t(), coef)          # neither contiguous nor channels_last
    assert not native.applies(torch.randn(2, 5, 4, 4), coef)         # channel count does not match


def test_relu6_slot_fused_clamp_equals_unit_then_clamp():
    """ClampedAt6(spline) runs min(spline(x), 6) as one fused op: same values, and the clamp passes the
    gradient where the unit's output is < 6 (none at the bound, as torch.clamp and ReLU6 do)."""
    from petl.activations import ClampedAt6
    _native()
    unit = LinearSplineUnit(1)                                       # ReLU at init: pre = relu(x)
    x = torch.tensor([6.0, 7.0, -1.0, 3.0, 5.999]).requires_grad_()
    y = ClampedAt6(unit)(x)
    assert torch.equal(y, x.detach().clamp(0, 6))
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    torch_clamp = x.detach().clone().requires_grad_()
    torch_clamp.relu().clamp(max=6.0).sum().backward()
    assert torch_clamp.grad.tolist() == x.grad.tolist()            # the bound as torch treats it
    for channels_last in (False, True):
        unit = _trained_like(LinearSplineUnit(32), seed=21)
        x = (3 * _input((4, 32, 8, 8), channels_last, seed=22)).detach().requires_grad_()   # beyond 6 too
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(23))
        fused, fused_grads = _grads(unit, lambda u, t: ClampedAt6(u)(t), x, g)
        plain, plain_grads = _grads(unit, lambda u, t: spline_reference(u, t).clamp(max=6.0), x, g)
        assert torch.equal(fused, plain)
        torch.testing.assert_close(fused_grads[0], plain_grads[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(fused_grads[1], plain_grads[1], rtol=0, atol=1e-5 * plain_grads[1].abs().max().item())


@pytest.mark.parametrize("upper", [float("inf"), 1.5])
def test_fused_kernel_first_and_second_derivatives_float64(upper):
    native = _native()
    unit = _trained_like(LinearSplineUnit(3, knots=7, knot_range=2.0), seed=3).double()
    x = (2.0 * torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))).requires_grad_()
    fn = lambda x, c: native.NativeSplineFunction.apply(x, c, unit.knot_range, unit.step, upper)
    assert torch.autograd.gradcheck(fn, (x, unit.coefficients))
    assert torch.autograd.gradgradcheck(fn, (x, unit.coefficients))


def _assert_deterministic_on_two_threads(unit: torch.nn.Module, seed: int) -> None:
    """Two backward passes on 2 threads give bitwise equal gradients (the kernels' fixed summation order)."""
    x = _input((16, 32, 32, 32), True, seed=seed)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = (_grads(unit, type(unit).__call__, x, g)[1] for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_fused_kernel_is_deterministic_with_two_threads():
    _native()
    _assert_deterministic_on_two_threads(_trained_like(LinearSplineUnit(1), seed=31), seed=32)


def test_without_the_kernel_units_use_the_autograd_form(monkeypatch):
    """PETL_NATIVE_KERNELS=0 skips the build; a failed build warns once, naming the cause, and falls back; either
    way the units compute the same function."""
    import torch.utils.cpp_extension as cpp_extension
    from petl import _native
    build = _native._build
    units = [(_trained_like(LinearSplineUnit(8), seed=41), spline_reference),
             (_trained_like(RationalUnit(8), seed=43), rational_reference),
             (_trained_like(AconCUnit(8, acon_beta=2.0), seed=44), acon_reference)]
    x = _input((2, 8, 6, 6), False, seed=42)

    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setenv("PETL_NATIVE_KERNELS", "0")
    monkeypatch.setattr(_native, "_build", lambda: pytest.fail("PETL_NATIVE_KERNELS=0 must not build"))
    assert _native.native_module() is None and not _native.applies(x, units[0][0].coefficients, 8)
    for unit, reference in units:
        assert torch.equal(unit(x), reference(unit, x))

    def no_ninja(**kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions\nsecond line")
    monkeypatch.delenv("PETL_NATIVE_KERNELS")
    monkeypatch.setattr(_native, "_build", build)
    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setattr(cpp_extension, "load", no_ninja)
    with pytest.warns(RuntimeWarning, match=r"could not be built \(Ninja is required to load C\+\+ extensions\)") as seen:
        assert _native.native_module() is None
        assert _native.native_module() is None                       # decided once: no retry, no second warning
    assert len(seen) == 1
    for unit, reference in units:
        assert torch.equal(unit(x), reference(unit, x))


# --- the rational and ACON-C units' fused kernels (petl._units_native) -----------------------------------------

def rational_reference(unit: RationalUnit, x: Tensor) -> Tensor:
    """The unit's definition in plain ops: R(clamp(x, -c, c)) + relu(x - c), R the safe (5, 4) Pade form."""
    c = unit.FIT_RANGE
    xc = x.clamp(-c, c)
    a = [_per_channel(unit.numerator[:, i], x) for i in range(6)]
    b = [_per_channel(unit.denominator[:, i], x) for i in range(4)]
    p = ((((a[5] * xc + a[4]) * xc + a[3]) * xc + a[2]) * xc + a[1]) * xc + a[0]
    ax = xc.abs()
    q = 1 + (((b[3].abs() * ax + b[2].abs()) * ax + b[1].abs()) * ax + b[0].abs()) * ax
    return p / q + F.relu(x - c)


def _unit(kind: str, channels: int, seed: int) -> torch.nn.Module:
    unit = RationalUnit(channels) if kind == "rational" else AconCUnit(channels, acon_beta=3.0)
    return _trained_like(unit, seed)


REFERENCES = {"rational": rational_reference, "acon_c": acon_reference}


@pytest.mark.parametrize("kind", ["rational", "acon_c"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rational_and_acon_fused_kernels_equal_their_definitions(kind, shape, per_channel, channels_last):
    _native()
    unit = _unit(kind, shape[1] if per_channel else 1, seed=shape[1])
    x = (2.5 * _input(shape, channels_last, seed=shape[2])).detach().requires_grad_()     # beyond +-5 too
    _compare_closed_form(unit, REFERENCES[kind], x)


def _compare_closed_form(unit: torch.nn.Module, reference, x: Tensor, fast=None) -> None:
    """A closed-form backward rounds differently from autograd's chain of ops, so it is held to accuracy rather
    than to equality: float64, fast == reference to 1e-6 in outputs and every gradient (relative to the
    gradient's size: the rational's reach 1e4); float32, outputs to 1e-6 and every gradient within 1e-6 of its
    size of the float64 value, or at most twice as far from it as the float32 autograd form is. (Which of a
    shared unit's parameter gradients autograd gets closest varies: one of ACON-C's p1 / p2 lands within 4e-7
    absolute, the other 2e-4 off, both sums of 2.6e5 float32 terms of size ~300.)"""
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    names = ["input"] + [n for n, _ in unit.named_parameters()]
    fast_fn = fast or type(unit).__call__
    fast, fast_grads = _grads(unit, fast_fn, x, g)
    ref, ref_grads = _grads(unit, reference, x, g)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)
    unit64, x64 = copy.deepcopy(unit).double(), x.detach().double().requires_grad_()
    fast64, fast64_grads = _grads(unit64, fast_fn, x64, g.double())
    ref64, ref64_grads = _grads(unit64, reference, x64, g.double())
    torch.testing.assert_close(fast64, ref64, rtol=0, atol=1e-6)
    for name, a64, b64, a32, b32 in zip(names, fast64_grads, ref64_grads, fast_grads, ref_grads):
        size = b64.abs().max().item()
        assert size > 0, f"{name} gradient is zero: the comparison would be vacuous"
        torch.testing.assert_close(a64, b64, rtol=0, atol=1e-6 * max(size, 1.0), msg=f"{name} gradient (float64)")
        fast_error = (a32.double() - b64).abs().max().item()
        autograd_error = (b32.double() - b64).abs().max().item()
        assert fast_error <= max(2 * autograd_error, 1e-6 * size), (name, fast_error, autograd_error, size)


@pytest.mark.parametrize("kind", ["rational", "acon_c"])
def test_rational_and_acon_at_their_kinks_and_bounds_and_on_vectors(kind):
    """Exact ties (the fit range's ends, 0, the ReLU6 bound) take torch's one-sided choices; (N, C) vectors."""
    from petl.activations import ClampedAt6
    _native()
    unit = _unit(kind, 5, seed=51)
    x = torch.tensor([[-5.0, 5.0, 0.0, 6.0, 7.5], [-6.0, 2.0, -0.5, 4.0, 1e-3]], dtype=torch.float64)
    unit64 = unit.double()
    cases = [(lambda u, t: u(t), REFERENCES[kind]),
             (lambda u, t: ClampedAt6(u)(t), lambda u, t: REFERENCES[kind](u, t).clamp(max=6.0))]
    for fn, reference in cases:
        g = torch.ones_like(x)
        fast, fast_grads = _grads(unit64, fn, x.clone().requires_grad_(), g)
        ref, ref_grads = _grads(unit64, reference, x.clone().requires_grad_(), g)
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
        for a, b in zip(fast_grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["rational", "acon_c"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rational_and_acon_in_the_relu6_slot_fuse_the_clamp(kind, channels_last):
    from petl.activations import ClampedAt6
    _native()
    unit = _unit(kind, 32, seed=61)
    x = (4 * _input((4, 32, 8, 8), channels_last, seed=62)).detach().requires_grad_()
    with torch.no_grad():
        out = ClampedAt6(unit)(x)
    assert (out == 6.0).any() and (out < 6.0).any()                  # both sides of the clamp are exercised
    _compare_closed_form(unit, lambda u, t: REFERENCES[kind](u, t).clamp(max=6.0), x,
                         fast=lambda u, t: ClampedAt6(u)(t))


@pytest.mark.parametrize("kind", ["rational", "acon_c"])
@pytest.mark.parametrize("upper", [float("inf"), 1.5])
def test_rational_and_acon_first_and_second_derivatives_float64(kind, upper):
    from petl._units_native import acon_c, rational
    _native()
    unit = _unit(kind, 3, seed=71).double()
    x = (3.0 * torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(72))).requires_grad_()
    if kind == "rational":
        fn = lambda x, a, b: rational(x, a, b, unit.FIT_RANGE, upper)
    else:
        fn = lambda x, p1, p2, beta: acon_c(x, p1, p2, beta, upper)
    params = tuple(unit.parameters())
    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


@pytest.mark.parametrize("kind", ["rational", "acon_c"])
def test_rational_and_acon_kernels_are_deterministic_with_two_threads(kind):
    _native()
    _assert_deterministic_on_two_threads(_unit(kind, 1, seed=81), seed=82)


def test_acon_at_its_init_beta_where_most_sigmoids_saturate():
    """beta = 100 (the default) puts most elements where the exact sigmoid is subnormal; the kernel's exp
    argument clamp (for speed) changes nothing visible: outputs and every gradient as the plain form's."""
    _native()
    unit = AconCUnit(32)
    with torch.no_grad():
        unit.p2.add_(0.1)                                  # p2 != 0: the p2 gradient is not a copy of p1's
    x = _input((8, 32, 16, 16), True, seed=91)
    _compare_closed_form(unit, acon_reference, x)
