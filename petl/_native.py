"""petl's fused CPU kernels (``petl/csrc``): the learnable activation units and Conv-Adapter's grouped conv,
built on first use.

Why compiled kernels: a learnable activation is cheap arithmetic on every activation element, and as a chain of
eager torch ops each step is a full pass over memory (the spline: about a dozen forward and eight backward passes
plus two scatter-adds; the (5, 4) rational: some 25 forward passes), where the ReLU6 it replaces needs one each
way. One C++ loop per direction (optionally with the ReLU6 slot's upper clamp fused in) reads ``x`` once and
saves nothing but ``x`` for the backward. The units' functions are in ``petl._spline_native`` and
``petl._units_native``; Conv-Adapter's grouped conv (``petl._grouped_conv_native``) has the same problem (a
C-wide intermediate written and read back at full resolution) and the same cure. This module builds and loads
the one extension they share.

The extension is compiled with ``torch.utils.cpp_extension`` (a C++ compiler and ninja; cached by torch under
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) the first time a float32 / float64 CPU tensor
reaches a spline, rational or ACON-C unit or a Conv-Adapter. Where it cannot be built, one warning says why and
those modules use their exact torch forms instead (same values, slower); ``PETL_NATIVE_KERNELS=0`` chooses those
forms without trying.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch
from torch import Tensor

SOURCE_DIR = Path(__file__).parent / "csrc"
SOURCES = tuple(SOURCE_DIR / name
                for name in ("spline_cpu.cpp", "units_cpu.cpp", "grouped_conv_cpu.cpp", "bindings.cpp"))
HEADERS = (SOURCE_DIR / "blocks.h",)
DISABLE_ENV = "PETL_NATIVE_KERNELS"
_loaded: dict[str, ModuleType | None] = {}


def native_module() -> ModuleType | None:
    """The compiled kernels, building them on the first call; None where disabled or not buildable."""
    if "module" not in _loaded:
        _loaded["module"] = _build() if os.environ.get(DISABLE_ENV, "1") != "0" else None
    return _loaded["module"]


@contextlib.contextmanager
def torch_forms() -> Iterator[None]:
    """Within this block every module with a fused kernel runs its exact torch form (as under
    ``PETL_NATIVE_KERNELS=0``). For tools that work at torch's dispatch level and cannot see inside a C++
    kernel: ``benchmarks.flops`` counts a step's convolutions and matmuls this way (the same function, so the
    same arithmetic; without it Conv-Adapter's grouped conv would count 0 FLOPs)."""
    had, before = "module" in _loaded, _loaded.get("module")
    _loaded["module"] = None
    try:
        yield
    finally:
        if had:
            _loaded["module"] = before
        else:
            del _loaded["module"]


def build_flags() -> tuple[str, list[str]]:
    """Extension name and compiler flags for this CPU.

    ``-fno-trapping-math`` lets the compiler turn the loops' selects into vector blends (it assumes no one
    reads floating-point exception flags; values are unchanged), ``-ffp-contract=off`` forbids fused
    multiply-adds so each element rounds exactly as the autograd form does, ``-mavx2`` (where the CPU has it)
    gives the table lookups vector gathers, ``-fopenmp`` the ``omp simd`` reductions. The name carries the
    instruction set, so that builds for different CPUs sharing one extension cache do not overwrite each other,
    and a digest of the sources and headers: torch rebuilds when a source changes but does not look at headers.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    isa = ["-mavx2"] if capability in ("AVX2", "AVX512") else []
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS)).hexdigest()[:10]
    return (f"petl_units_cpu_{capability.lower()}_{digest}",
            ["-O3", *isa, "-fno-trapping-math", "-ffp-contract=off", "-fopenmp"])


def kernel_status() -> str:
    """What this process used: "fused" (the kernels are loaded), "autograd" (tried; disabled or not buildable),
    or "unused" (no float CPU tensor reached a unit with a kernel). Recorded with each benchmark run's
    efficiency figures."""
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
        return load(name=name, sources=[str(p) for p in SOURCES], extra_include_paths=[str(SOURCE_DIR)],
                    extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:   # no compiler / ninja: the exact autograd forms still work, only slower
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        warnings.warn(f"petl: the fused CPU kernels could not be built ({reason}); GPAF's spline, rational and "
                      f"ACON-C units and Conv-Adapter use their slower exact torch forms. Install a C++ compiler "
                      f"and ninja to get them, or set {DISABLE_ENV}=0 to skip the attempt", RuntimeWarning,
                      stacklevel=3)
        return None


def applies(x: Tensor, params: Tensor, channels: int) -> bool:
    """True where a fused kernel handles this call: CPU, float32 / float64 input in the parameters' dtype, a
    contiguous or channels_last input, channels along dim 1 (or one shared unit), and the kernels available."""
    return (x.device.type == "cpu" and params.device.type == "cpu" and x.dtype == params.dtype
            and x.numel() > 0
            and x.dtype in (torch.float32, torch.float64) and dense(x)
            and (channels == 1 or (x.dim() >= 2 and x.shape[1] == channels))
            and native_module() is not None)


def dense(x: Tensor) -> bool:
    """Contiguous or channels_last: the memory orders the kernels read as (outer, C, inner) blocks."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def inner(x: Tensor, channels: int) -> int:
    """Elements per channel run in memory order: element e of the dense buffer is in channel (e // inner) % C."""
    return x.stride(1) if channels > 1 else 1


def grad_like(grad: Tensor, x: Tensor) -> Tensor:
    """The incoming gradient with ``x``'s dtype and strides, as the kernels read both buffers in one order."""
    if grad.dtype != x.dtype or grad.stride() != x.stride():
        return torch.empty_like(x).copy_(grad)
    return grad
