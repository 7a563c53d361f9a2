"""The public verbs: apply a method, count and summarise parameters, merge and unmerge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .batchnorm import set_bn_policy
from .layers import adapter_layers
from .registry import MethodSpec, get_method, make_options, options_to_dict
from .resnet_blocks import split_shared_activations
from .snapshot import ModelSnapshot
from .state import freeze, get_state


def apply(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Insert ``method`` into ``model`` (in place) and return it.

    The first method applied freezes every parameter of the model and sets the frozen-BatchNorm policy;
    each method then marks its own parameters (and usually the head) trainable. Later methods compose:
    they do not re-freeze what earlier ones made trainable.

    Atomic: if the method raises, the model's modules, hooks, ``requires_grad`` flags, BatchNorm policy and
    petl record are restored before the error propagates (see ``petl.snapshot``).
    """
    spec = get_method(method)
    opts = make_options(method, options)
    split_shared_activations(model)  # a user's own torchvision ResNet gets per-position activations too
    snapshot = ModelSnapshot(model)
    try:
        _apply_spec(model, spec, opts)
    except BaseException:
        snapshot.restore()
        raise
    state = get_state(model)
    state.methods.append({"method": method, "options": options_to_dict(opts)})
    state.trained = [p for p in _unique_params(model) if p.requires_grad]
    return model


def _apply_spec(model: nn.Module, spec: MethodSpec, opts: Any) -> None:
    """Freeze on first use, insert the method, then set the BatchNorm policy it asks for."""
    if not get_state(model).methods:
        freeze(model)
        set_bn_policy(model, "frozen")
    spec.apply(model, opts)
    if spec.bn_policy == "train":
        set_bn_policy(model, "train")


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (shared tensors counted once)."""
    return sum(p.numel() for p in _unique_params(model) if p.requires_grad)


def total_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in _unique_params(model))


def _unique_params(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


@dataclass
class Summary:
    total: int
    trainable: int
    by_module: dict[str, int]   # trainable parameters per top-level-ish module group
    methods: list[dict[str, Any]]

    @property
    def percent_trainable(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        lines = [f"total parameters     {self.total:>14,}",
                 f"trainable parameters {self.trainable:>14,}  ({self.percent_trainable:.3f} %)",
                 "methods: " + (", ".join(m["method"] for m in self.methods) or "(none)"),
                 "trainable by module:"]
        lines += [f"  {name:<40} {count:>12,}" for name, count in self.by_module.items()]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "trainable": self.trainable, "percent_trainable": self.percent_trainable,
                "by_module": self.by_module, "methods": self.methods}


def summary(model: nn.Module, depth: int = 2) -> Summary:
    """Total / trainable parameters, % trainable, and trainable parameters grouped by module prefix."""
    by_module: dict[str, int] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        module_path = name.rpartition(".")[0] or name
        key = ".".join(module_path.split(".")[:depth])
        by_module[key] = by_module.get(key, 0) + p.numel()
    return Summary(total=total_parameters(model), trainable=trainable_parameters(model), by_module=by_module,
                   methods=list(get_state(model).methods))


def _mergeable_layers(model: nn.Module) -> list[nn.Module]:
    """Adapter layers (``petl.layers``: petl's own and peft's tuner layers) that can fold their delta into the
    base weight."""
    return [m for _, m in adapter_layers(model) if callable(getattr(m, "merge", None))
            and callable(getattr(m, "unmerge", None))]


def merge(model: nn.Module) -> int:
    """Fold every mergeable low-rank delta into its base weight (zero inference overhead).

    Returns the number of mergeable layers, all merged afterwards (layers already merged are left as they are).
    """
    layers = _mergeable_layers(model)
    for layer in layers:
        if not getattr(layer, "merged", False):
            layer.merge()
    return len(layers)


def unmerge(model: nn.Module) -> int:
    """Undo ``merge``: subtract the deltas again so training can continue. Returns the number of mergeable layers."""
    layers = _mergeable_layers(model)
    for layer in layers:
        if getattr(layer, "merged", False):
            layer.unmerge()
    return len(layers)
