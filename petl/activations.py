"""Learnable activation candidates for the GPAF slot (``petl.methods.gpaf``).

Every candidate equals ReLU at initialisation -- exactly (``prelu``, ``spline``) or within a stated bound
(``rational``, ``acon_c``) -- so that swapping it into a pretrained CNN leaves the network's function intact at
step 0 and training starts from the pretrained model, not from a perturbed one.

Adding a candidate is one class and one decorator::

    @register_activation("my_unit")
    class MyUnit(ActivationUnit):
        def __init__(self, num_channels: int = 1) -> None: ...
        def forward(self, x: Tensor) -> Tensor: ...

The class is constructed with ``num_channels`` (1 for a scalar unit shared by all channels) plus the keyword
knobs it lists in ``knobs`` (names of ``GpafOptions`` fields). Parameters are per channel along dim 1, so a
unit works on (N, C, H, W) feature maps and (N, C) vectors alike.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._native import kernel_status as spline_kernel_status  # noqa: F401 (re-exported)
from ._spline_native import spline
from ._units_native import acon_c, rational, rational_plain
from .errors import DuplicateRegistrationError, PetlConfigError
from .layers import AdapterLayer

_ACTIVATIONS: dict[str, type[nn.Module]] = {}


def register_activation(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an activation unit available to GPAF as ``kind=name``."""
    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _ACTIVATIONS:
            raise DuplicateRegistrationError(f"activation {name!r} is already registered; choose another name")
        _ACTIVATIONS[name] = cls
        cls.kind = name
        return cls
    return decorator


def available_activations() -> list[str]:
    """Names of the registered candidates, sorted."""
    return sorted(_ACTIVATIONS)


def get_activation(name: str) -> type[nn.Module]:
    """The class registered as ``name``; an unknown name raises an error listing the candidates."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise PetlConfigError(f"unknown activation kind {name!r}; registered candidates: "
                              f"{', '.join(available_activations())}") from None


def is_activation_unit(module: nn.Module) -> bool:
    """True for an instance of a registered candidate (the GPAF regulariser and tests find units this way)."""
    return isinstance(module, tuple(_ACTIVATIONS.values()))


class ActivationUnit(AdapterLayer, nn.Module):
    """Base class of the candidates: ``knobs`` and a ``regularization`` that is ``None`` unless overridden."""

    base_attr = None                          # inserted in place of a ReLU: it wraps nothing
    kind: ClassVar[str] = ""
    knobs: ClassVar[tuple[str, ...]] = ()     # GpafOptions fields passed to __init__ as keywords
    penalty_weight: float = 0.0               # factor the GPAF regulariser applies to regularization()

    def regularization(self) -> Tensor | None:
        """An extra loss term for this unit (unweighted), or None when the unit has none."""
        return None


@register_activation("prelu")
class PReLUUnit(ActivationUnit):
    """PReLU with its negative slope initialised to 0: exactly ReLU at init (max(x, 0) + 0 * min(x, 0))."""

    adapter_parameter_names = ("weight",)

    def __init__(self, num_channels: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.prelu(x, self.weight)


@register_activation("spline")
class LinearSplineUnit(ActivationUnit):
    """Per-channel linear spline on a uniform knot grid (DeepSplines, Bohra et al. 2020), exactly ReLU at init.

    f(x) = relu(x) + g(x), where g is the piecewise-linear interpolant of learnable values ``coefficients``
    (C, K) at K uniform knots on [-knot_range, knot_range], extrapolated linearly beyond the end knots with the
    slope of the end segments. The knot count must be odd so 0 is a knot; relu + g then spans exactly the linear
    splines on that grid (relu's only kink is at the knot 0). Writing f as relu plus a residual initialised to
    zero, rather than as interpolated ReLU values, is what makes the init exact: interpolating relu's own knot
    values computes c_i + (x - t_i) * 1, which is not bitwise x in floating point; relu(x) + 0 is.

    ``regularization()`` is the second-order total variation of g: sum over channels and interior knots of
    |g_{k-1} - 2 g_k + g_{k+1}| / h (the sum of slope jumps of g). It is 0 at init and penalises deviations from
    the pretrained ReLU that need many knots, which is DeepSplines' sparsity prior measured relative to ReLU.

    The forward is ``petl._spline_native.spline``: on CPU (float32 / float64) one fused C++ loop per direction,
    elsewhere ``petl._spline_function.SplineFunction``; both are the arithmetic of the plain autograd form
    relu(x) + (c[i] + frac * (c[i + 1] - c[i])) with hand-written backwards (tests/test_activation_fast_forms.py).
    """

    knobs = ("knots", "knot_range", "tv2_weight")

    adapter_parameter_names = ("coefficients",)

    def __init__(self, num_channels: int = 1, knots: int = 21, knot_range: float = 3.0,
                 tv2_weight: float = 1e-4) -> None:
        super().__init__()
        if knots < 3 or knots % 2 == 0:
            raise PetlConfigError(f"spline knots must be an odd integer >= 3 (a knot at 0), got {knots}")
        if not knot_range > 0:
            raise PetlConfigError(f"spline knot_range must be > 0, got {knot_range}")
        if tv2_weight < 0:
            raise PetlConfigError(f"spline tv2_weight must be >= 0, got {tv2_weight}")
        self.num_knots = knots
        self.knot_range = float(knot_range)
        self.step = 2 * self.knot_range / (knots - 1)
        self.penalty_weight = float(tv2_weight)
        self.coefficients = nn.Parameter(torch.zeros(num_channels, knots))

    def forward(self, x: Tensor) -> Tensor:
        return spline(x, self.coefficients, self.knot_range, self.step)

    def clamped(self, x: Tensor, upper: float) -> Tensor:
        """min(self(x), upper) in one fused op where the CPU kernel applies (the ReLU6 slot, ``ClampedAt6``)."""
        return spline(x, self.coefficients, self.knot_range, self.step, upper)

    def regularization(self) -> Tensor:
        c = self.coefficients
        return (c[:, :-2] - 2 * c[:, 1:-1] + c[:, 2:]).abs().sum() / self.step


# Pade (5, 4) coefficients fitted to ReLU, produced once offline with scipy (1.x): first
# scipy.optimize.least_squares (method "lm") on 2001 uniform points of [-5, 5] on the safe form below, best of
# 9 starts (max error 0.0500, at x = 0); then Lawson-style iteratively reweighted least squares (weights
# multiplied by |error| / max|error| each round, 25 rounds, 1001 points, method "trf") towards the minimax fit,
# keeping the round with the smallest max error on 200001 points (round 4). Sign of the b_k is irrelevant (|b_k|).
# Max |R(x) - relu(x)| on [-5, 5]: RationalUnit.MAX_DEVIATION (checked in tests/test_gpaf.py); outside it the
# unit continues along ReLU's asymptotes, so the bound holds everywhere.
_RATIONAL_NUMERATOR = (0.02097129, 0.53103970, 1.83859495, 1.81310714, 0.62302814, 0.06728679)
_RATIONAL_DENOMINATOR = (0.36851810, -3.18362850, -0.16879628, -0.11520233)


@register_activation("rational")
class RationalUnit(ActivationUnit):
    """Safe Pade activation unit (Molina et al., ICLR 2020), degrees (5, 4), initialised to a fit of ReLU on
    [-c, c] (c = ``FIT_RANGE`` = 5) and continued outside it along ReLU's own asymptotes.

    R(x) = (a0 + a1 x + ... + a5 x^5) / (1 + |b1| |x| + |b2| |x|^2 + |b3| |x|^3 + |b4| |x|^4); the absolute values
    keep the denominator >= 1 (no poles). The unit is

        F(x) = R(clamp(x, -c, c)) + relu(x - c),

    i.e. R on the fitted range, R(c) + (x - c) above it (slope 1, as ReLU) and the constant R(-c) below it (slope
    0, as ReLU); F is continuous and all coefficients still learn (R(+-c) move with them). Why the continuation:
    a safe (5, 4) rational grows like (a5 / |b4|) x on *both* sides (0.58 x here), so it cannot follow ReLU on an
    unbounded range, and pretrained backbones feed their activations values far outside [-5, 5] (figures in
    docs/design-notes.md, "Rational unit"), where the plain rational changes the logits badly. With the continuation
    max |F(x) - relu(x)| over the whole real line is the deviation on [-c, c]: MAX_DEVIATION = 0.02385 (float32;
    the error equioscillates, F(0) = 0.021, largest at x = -5). Not exactly ReLU at init: through a deep network
    the per-activation errors still add up (tests/test_gpaf.py measures the pretrained Lite0's logits).

    The forward is ``petl._units_native.rational``: on CPU (float32 / float64) one fused C++ loop per direction
    with a closed-form backward, elsewhere the plain autograd form it is checked against
    (tests/test_activation_fast_forms.py).
    """

    MAX_DEVIATION: ClassVar[float] = 0.0239
    FIT_RANGE: ClassVar[float] = 5.0

    adapter_parameter_names = ("numerator", "denominator")

    def __init__(self, num_channels: int = 1) -> None:
        super().__init__()
        self.numerator = nn.Parameter(torch.tensor(_RATIONAL_NUMERATOR).repeat(num_channels, 1))
        self.denominator = nn.Parameter(torch.tensor(_RATIONAL_DENOMINATOR).repeat(num_channels, 1))

    def rational(self, x: Tensor) -> Tensor:
        """R(x), the Pade form itself (no continuation)."""
        return rational_plain(x, self.numerator, self.denominator)

    def forward(self, x: Tensor) -> Tensor:
        return rational(x, self.numerator, self.denominator, self.FIT_RANGE)

    def clamped(self, x: Tensor, upper: float) -> Tensor:
        """min(self(x), upper) in one fused op where the CPU kernel applies (the ReLU6 slot, ``ClampedAt6``)."""
        return rational(x, self.numerator, self.denominator, self.FIT_RANGE, upper)


@register_activation("acon_c")
class AconCUnit(ActivationUnit):
    """ACON-C (Ma et al., CVPR 2021): (p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x, learnable per channel.

    Init p1 = 1, p2 = 0 gives x sigmoid(beta x) (Swish with slope beta); its largest deviation from ReLU is
    max_u u / (1 + e^u) / beta = 0.27846 / beta (at |x| = 1.2785 / beta), so the default beta = 100 deviates by
    at most 0.0027846 everywhere.

    The forward is ``petl._units_native.acon_c``: a fused CPU kernel where it applies, else the plain form.
    """

    knobs = ("acon_beta",)
    BOUND_CONSTANT: ClassVar[float] = 0.278465   # max over u >= 0 of u / (1 + e^u)

    adapter_parameter_names = ("p1", "p2", "beta")

    def __init__(self, num_channels: int = 1, acon_beta: float = 100.0) -> None:
        super().__init__()
        if not acon_beta > 0:
            raise PetlConfigError(f"acon_beta must be > 0, got {acon_beta}")
        self.p1 = nn.Parameter(torch.ones(num_channels))
        self.p2 = nn.Parameter(torch.zeros(num_channels))
        self.beta = nn.Parameter(torch.full((num_channels,), float(acon_beta)))

    def max_deviation(self) -> float:
        """Bound on |unit(x) - relu(x)| at init (p1 = 1, p2 = 0)."""
        return self.BOUND_CONSTANT / float(self.beta.detach().min())

    def forward(self, x: Tensor) -> Tensor:
        return acon_c(x, self.p1, self.p2, self.beta)

    def clamped(self, x: Tensor, upper: float) -> Tensor:
        """min(self(x), upper) in one fused op where the CPU kernel applies (the ReLU6 slot, ``ClampedAt6``)."""
        return acon_c(x, self.p1, self.p2, self.beta, upper)


class ClampedAt6(AdapterLayer, nn.Module):
    """min(unit(x), 6): stands in for a ReLU6 so the unit is still exactly the pretrained ReLU6 at init."""

    base_attr = None
    adapter_parameter_names = ("unit",)

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, x: Tensor) -> Tensor:
        clamped = getattr(self.unit, "clamped", None)      # a unit may fuse the clamp into its own op
        return clamped(x, 6.0) if clamped is not None else self.unit(x).clamp(max=6.0)

