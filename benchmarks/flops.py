"""Training FLOPs of one step, split into forward / input-gradient / weight-gradient, per layer.

A method's FLOP ratio to full fine-tuning (full fine-tuning's FLOPs / the method's) is the speed-up it could reach
if every FLOP cost the same: its compute bound. ``benchmarks.performance`` puts it next to the measured throughput
ratio, so a method is judged against its own bound (LoRA-C's materialised k x k convs still need the full
weight gradient; a frozen backbone skips the weight gradients; the linear probe skips the backward).

Counting uses torch's own per-op formulas (``torch.utils.flop_counter.flop_registry``: convolutions, matmuls,
attention; element-wise ops count 0, as in ``FlopCounterMode``) inside one dispatch mode that also records

* the phase: an op that autograd's engine runs (``torch._C._current_graph_task_id() != -1``) is backward, anything
  else forward -- so a method's own trainer (MetaLR's look-ahead) is split by the same rule;
* for a convolution's backward, its input-gradient and weight-gradient parts separately (the op's
  ``output_mask`` says which it computes); the weight-gradient part is counted as the forward conv's FLOPs,
  because torch's formula for it ignores ``groups`` (so for depth-wise convs these counts differ from
  ``FlopCounterMode``'s, which are wrong there; for ungrouped convs they are equal);
* for a matmul in the backward, weight-gradient when its result has the shape of a parameter of the model (or
  its transpose), else input-gradient (LoRA-C's ``B @ A`` backward and the head's weight gradient are weight
  gradients; the head's input gradient is not);
* the layer, for the per-layer table: in the forward the innermost module running the op
  (``torch.utils.module_tracker.ModuleTracker``); in the backward the layer whose weight the op reads -- a
  parameter, or the weight a conv used in the forward (LoRA-C's materialised W + B A) -- recognised by its
  storage, because the tracker's backward attribution is unreliable for such modules; other backward ops
  fall back to the tracker.

The step counted is the one timed: the method's trainer (or forward + loss + backward + AdamW), with petl's fused
C++ kernels swapped for their torch forms (``petl._native.torch_forms``): a dispatch mode cannot see inside a C++
kernel, and the torch forms are the same function. Tensors may live on the ``meta`` device, so a count costs no
arithmetic.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.module_tracker import ModuleTracker

from petl._native import torch_forms

PHASES = ("forward", "input_grad", "weight_grad")
_CONV_BACKWARD = torch.ops.aten.convolution_backward.default._overloadpacket
_CONV_FORWARD = torch.ops.aten.convolution.default._overloadpacket
_OUTPUT_MASK_ARG = 10   # aten.convolution_backward(grad_out, input, weight, bias_sizes, stride, padding, dilation,
#                         transposed, output_padding, groups, output_mask)


@dataclass
class FlopSplit:
    """FLOPs of one step by phase, and by (innermost module, phase)."""

    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    per_layer: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: dict.fromkeys(PHASES, 0)))

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def add(self, layer: str, phase: str, flops: int) -> None:
        if flops:
            self.totals[phase] += flops
            self.per_layer[layer][phase] += flops

    def as_row(self) -> dict[str, float]:
        """Columns for the performance table, in GFLOP per step."""
        row = {f"gflop_{p}": self.totals[p] / 1e9 for p in PHASES}
        row["gflop_step"] = self.total / 1e9
        return row

    def layer_rows(self) -> list[dict[str, Any]]:
        """One row per module that ran a counted op (name without the root class prefix), GFLOP per phase."""
        rows = []
        for layer, phases in self.per_layer.items():
            rows.append({"layer": layer, **{f"gflop_{p}": phases[p] / 1e9 for p in PHASES},
                         "gflop_step": sum(phases.values()) / 1e9})
        return rows


def _key(t: Any) -> tuple:
    """Identity of a tensor's data that survives autograd's save / unpack (the Python object may differ) and
    views (a matmul's backward reads ``A.t()``): its storage (the C++ StorageImpl, so meta tensors work too) and
    offset."""
    return (t.untyped_storage()._cdata, t.storage_offset())


class _SplitCounter(TorchDispatchMode):
    def __init__(self, tracker: ModuleTracker, param_shapes: set[tuple[int, ...]], split: FlopSplit,
                 weight_layers: dict[tuple, str]) -> None:
        super().__init__()
        self.tracker = tracker
        self.param_shapes = param_shapes
        self.split = split
        self.weight_layers = weight_layers       # parameter key -> layer (parameters outlive the step)
        self.forward_weights: dict[tuple, str] = {}   # key of a computed conv weight -> layer, until its backward

    def _backward_layer(self, args: tuple) -> str:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        for t in tensors:
            layer = self.weight_layers.get(_key(t))
            if layer is not None:
                return layer
        for t in tensors:                        # popped: its memory may hold another tensor later
            layer = self.forward_weights.pop(_key(t), None)
            if layer is not None:
                return layer
        return self._layer()

    def _layer(self) -> str:
        names = [n for n in self.tracker.parents if n != "Global"]
        if not names:
            return "(outside modules)"
        innermost = max(names, key=lambda n: n.count("."))
        return innermost.split(".", 1)[1] if "." in innermost else innermost

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = flop_registry.get(packet)
        if formula is None:
            return out
        if torch._C._current_graph_task_id() == -1:
            layer = self._layer()
            if packet is _CONV_FORWARD and _key(args[1]) not in self.weight_layers:
                self.forward_weights[_key(args[1])] = layer
            self.split.add(layer, "forward", formula(*args, **kwargs, out_val=out))
            return out
        if packet is _CONV_BACKWARD:
            layer = self._backward_layer(args[2:3])
            mask = list(args[_OUTPUT_MASK_ARG])
            if mask[0]:
                part = list(args)
                part[_OUTPUT_MASK_ARG] = [True, False, False]
                self.split.add(layer, "input_grad", formula(*part, **kwargs, out_val=out))
            if mask[1]:
                self.split.add(layer, "weight_grad", _conv_weight_grad_flops(args))
        else:
            layer = self._backward_layer(args)
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            is_weight = shape is not None and (shape in self.param_shapes or shape[::-1] in self.param_shapes)
            self.split.add(layer, "weight_grad" if is_weight else "input_grad",
                           formula(*args, **kwargs, out_val=out))
        return out


def _conv_weight_grad_flops(args: tuple) -> int:
    """A convolution's weight gradient does one multiply-add per multiply-add of its forward: count it as the
    forward conv (input, weight, ..., groups) producing grad_out's shape. torch's own formula for this part
    ignores ``groups`` and overcounts a depth-wise conv by its channel count (EfficientNet-Lite0's full
    fine-tuning came out at 168 GFLOP per step instead of 12 at 64 px, batch 64)."""
    grad_out, x, weight, _bias, stride, padding, dilation, transposed, output_padding, groups = args[:10]
    return flop_registry[torch.ops.aten.convolution.default._overloadpacket](
        x, weight, None, stride, padding, dilation, transposed, output_padding, groups, out_val=grad_out)


def count_step(model: torch.nn.Module, step: Callable[[], Any]) -> FlopSplit:
    """FLOPs of ``step()`` (one training step of ``model``), by phase and by layer."""
    split = FlopSplit()
    shapes = {tuple(p.shape) for p in model.parameters() if p.dim() >= 2}
    weight_layers = {_key(p): name.rpartition(".")[0] or name for name, p in model.named_parameters()}
    tracker = ModuleTracker()
    with tracker, _SplitCounter(tracker, shapes, split, weight_layers), torch_forms():
        step()
    return split


def flop_ratio(full_ft: float, method: float) -> float:
    """The compute bound of a method's training throughput relative to full fine-tuning: FLOPs(full) / FLOPs(m)."""
    return full_ft / method if method else float("nan")
