"""Memory layout and compilation of the model a run trains: one decision per (backbone, device), by table.

``Runtime.memory_format`` is ``auto`` (default), ``channels_last`` or ``contiguous``; ``auto`` looks the backbone and
device type up in ``MEASURED_LAYOUT``, a table meant to be filled from measurements (``benchmarks.performance`` /
the interleaved A/B in ``results/benchmarks/``) and not from guesses. Until a pair is measured, ``auto`` keeps the
engine's earlier behaviour: channels_last on CUDA (``Runtime.channels_last``, on by default), contiguous on CPU.
``Runtime.compile`` (off by default) compiles the model in place with ``nn.Module.compile`` -- the module, its
parameter names and its state_dict stay as they are, so checkpoints, adapter files and method hooks keep working;
whether it pays for its compile time on a run of a given size is a measurement too (issue 12, item 2).

The same rules apply to every method: nothing here looks at which method is applied.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmarks.config import MEMORY_FORMATS

# (backbone, device type) -> "channels_last" | "contiguous", measured on that device (fastest train step in an
# interleaved A/B of whole training steps, for every method measured); a pair not here falls back to the default
# rule. Sources: results/benchmarks/layout_ab_*.md (Lite0 on CPU: channels_last faster for all 15 methods;
# the MedMNIST v2 CIFAR-style ResNet-50 at 28 px on CPU: channels_last faster for full_ft, its only method).
MEASURED_LAYOUT: dict[tuple[str, str], str] = {
    ("efficientnet_lite0", "cpu"): "channels_last",
    ("cifar_resnet50", "cpu"): "channels_last",
}

_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def resolve_memory_format(choice: str, backbone: str, device: torch.device | str,
                          cuda_channels_last: bool = True) -> str:
    """The layout a run uses: ``choice`` itself, or for ``auto`` the measured table, else the default rule."""
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {choice!r}")
    if choice != "auto":
        return choice
    kind = torch.device(device).type
    measured = MEASURED_LAYOUT.get((backbone, kind))
    if measured is not None:
        return measured
    return "channels_last" if kind == "cuda" and cuda_channels_last else "contiguous"


def run_layout(runtime: Any, backbone: str, device: torch.device | str) -> str:
    """:func:`resolve_memory_format` for a ``benchmarks.config.Runtime``."""
    return resolve_memory_format(runtime.memory_format, backbone, device, runtime.channels_last)


def prepare_model(model: nn.Module, layout: str, compile_model: bool = False) -> nn.Module:
    """Put the model in ``layout`` and, if asked, compile it in place; returns the same module."""
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model.compile()
    return model


def prepare_input(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A 4-D batch in ``layout`` (other ranks unchanged)."""
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
