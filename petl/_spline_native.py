"""The fused CPU kernels of the linear spline unit (``petl/csrc/spline_cpu.cpp``), built on first use.

Why a compiled kernel: the unit is cheap arithmetic on every activation element, and as a chain of eager
torch ops (``petl._spline_function``) each step is a full pass over memory -- about a dozen forward and eight
backward passes plus two scatter-adds, where ReLU6 needs one each way. One C++ loop per direction (optionally
with the ReLU6 slot's upper clamp fused in) reads ``x`` once and saves nothing but ``x`` for the backward.

The kernel is compiled with ``torch.utils.cpp_extension`` (a C++ compiler and ninja; cached by torch under
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) the first time a float32 / float64 CPU tensor
reaches a spline unit. Where it cannot be built, one warning says why and the units use the exact autograd
form instead (same values, slower); ``PETL_NATIVE_SPLINE=0`` chooses that form without trying.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ._spline_function import SplineFunction, reference_grads

SOURCE = Path(__file__).parent / "csrc" / "spline_cpu.cpp"
DISABLE_ENV = "PETL_NATIVE_SPLINE"
_loaded: dict[str, ModuleType | None] = {}


def native_module() -> ModuleType | None:
    """The compiled kernels, building them on the first call; None where disabled or not buildable."""
    if "module" not in _loaded:
        _loaded["module"] = _build() if os.environ.get(DISABLE_ENV, "1") != "0" else None
    return _loaded["module"]


def build_flags() -> tuple[str, list[str]]:
    """Extension name and compiler flags for this CPU.

    ``-fno-trapping-math`` lets the compiler turn the loops' selects into vector blends (it assumes no one
    reads floating-point exception flags; values are unchanged), ``-ffp-contract=off`` forbids fused
    multiply-adds so each element rounds exactly as the autograd form does, ``-mavx2`` (where the CPU has it)
    gives the table lookups vector gathers. The name carries the instruction set so that builds for different
    CPUs sharing one extension cache do not overwrite each other.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    isa = ["-mavx2"] if capability in ("AVX2", "AVX512") else []
    return (f"petl_spline_cpu_{capability.lower()}",
            ["-O3", *isa, "-fno-trapping-math", "-ffp-contract=off", "-fopenmp"])


def kernel_status() -> str:
    """What this process used: "fused" (the kernel is loaded), "autograd" (tried; disabled or not buildable), or
    "unused" (no float CPU tensor reached a spline unit). Recorded with each benchmark run's efficiency figures."""
    if "module" not in _loaded:
        return "unused"
    return "fused" if _loaded["module"] is not None else "autograd"


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the ninja wheel (a dependency) sits in the environment's scripts folder,
    which is not on PATH when the interpreter is called by its full path (``.venv/bin/python``)."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build() -> ModuleType | None:
    try:
        from torch.utils.cpp_extension import load
        _put_ninja_on_path()
        name, flags = build_flags()
        return load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:   # no compiler / ninja: the exact autograd form still works, only slower
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        warnings.warn(f"petl: the fused CPU spline kernel could not be built ({reason}); GPAF's spline units "
                      f"use the slower exact autograd form. Install a C++ compiler and ninja to get it, or set "
                      f"{DISABLE_ENV}=0 to skip the attempt", RuntimeWarning, stacklevel=3)
        return None


def applies(x: Tensor, coefficients: Tensor) -> bool:
    """True where the fused kernel handles this call: CPU, float32 / float64 input in the coefficients' dtype,
    a contiguous or channels_last input, channels along dim 1 (or one shared unit), and the kernel available."""
    return (x.device.type == "cpu" and coefficients.device.type == "cpu" and x.dtype == coefficients.dtype
            and x.numel() > 0
            and x.dtype in (torch.float32, torch.float64) and _dense(x)
            and (coefficients.shape[0] == 1 or (x.dim() >= 2 and x.shape[1] == coefficients.shape[0]))
            and native_module() is not None)


def _dense(x: Tensor) -> bool:
    """Contiguous or channels_last: the memory orders the kernel reads as (outer, C, inner) blocks."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _inner(x: Tensor, channels: int) -> int:
    """Elements per channel run in memory order: element e of the dense buffer is in channel (e // inner) % C."""
    return x.stride(1) if channels > 1 else 1


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
        inner = _inner(x, coefficients.shape[0])
        ctx.save_for_backward(x, coefficients)
        ctx.settings = (inner, knot_range, step, upper)
        return native_module().forward(x.detach(), coefficients_c, inner, knot_range, step, upper)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, coefficients = ctx.saved_tensors
        inner, knot_range, step, upper = ctx.settings
        need_x, need_c = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():                          # create_graph=True: differentiate the autograd form
            return reference_grads(x, coefficients, knot_range, step, grad, (need_x, need_c), upper) + (
                None, None, None)
        if grad.dtype != x.dtype or grad.stride() != x.stride():
            grad = torch.empty_like(x).copy_(grad)
        grad_x, grad_c = native_module().backward(x.detach(), coefficients.detach().contiguous(), grad, inner,
                                                  knot_range, step, upper, need_x, need_c)
        return (grad_x if need_x else None, grad_c.view_as(coefficients) if need_c else None, None, None, None)


def spline(x: Tensor, coefficients: Tensor, knot_range: float, step: float, upper: float = math.inf) -> Tensor:
    """min(relu(x) + spline(x), upper): the fused kernel where it applies, else the autograd form."""
    if applies(x, coefficients):
        return NativeSplineFunction.apply(x, coefficients, knot_range, step, upper)
    out = SplineFunction.apply(x, coefficients, knot_range, step)
    return out if math.isinf(upper) else out.clamp(max=upper)
