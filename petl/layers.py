"""The adapter-layer contract, as peft's ``BaseTunerLayer``: every module a method puts into a model declares
what it wraps and which parameters are its own.

Two kinds of modules take part:
* wrappers (LoRA-C's ``LoRAConv2d``, SSF's ``SSFNorm``, peft's tuner layers): ``base_attr`` names the attribute
  holding the wrapped backbone layer (``"base"`` for petl's, ``"base_layer"`` for peft's);
* inserted modules (Conv-Adapter's adapters, GPAF's activation units): ``base_attr`` is None, everything inside
  them belongs to the method.

Both list their own parameters in ``adapter_parameter_names``. Target resolution (never wrap a base twice, never
target a method's own convs), geometry lookups (``get_base_layer``, unwrapping nested wrappers in one place),
merging and marking parameters trainable read this declaration, so a method that wraps a layer under a new
attribute composes with the others by declaring it, not by a name every other method has to know.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

PEFT_BASE_ATTR = "base_layer"


class AdapterLayer:
    """Mixin for petl's adapter modules (combine with ``nn.Module``); subclasses set the two class attributes."""

    base_attr: ClassVar[str | None] = "base"
    adapter_parameter_names: ClassVar[tuple[str, ...]] = ()


def _is_peft_layer(module: nn.Module) -> bool:
    """peft's tuner layers (``BaseTunerLayer``), recognised by their own contract without importing peft."""
    return (callable(getattr(module, "get_base_layer", None)) and hasattr(module, "adapter_layer_names")
            and isinstance(getattr(module, PEFT_BASE_ATTR, None), nn.Module))


def is_adapter_layer(module: nn.Module) -> bool:
    """True for any module that declares the contract (petl's or peft's)."""
    return isinstance(module, AdapterLayer) or _is_peft_layer(module)


def base_layer_attr(module: nn.Module) -> str | None:
    """The attribute holding the layer ``module`` wraps; None for plain modules and inserted adapters."""
    if isinstance(module, AdapterLayer):
        return module.base_attr
    return PEFT_BASE_ATTR if _is_peft_layer(module) else None


def is_inserted(module: nn.Module) -> bool:
    """True for a module a method added whole (its convs and parameters are the method's, not the backbone's)."""
    return isinstance(module, AdapterLayer) and module.base_attr is None


def get_base_layer(module: nn.Module) -> nn.Module:
    """The backbone layer under any number of nested wrappers (``module`` itself when it wraps nothing)."""
    seen: set[int] = set()
    while id(module) not in seen:
        seen.add(id(module))
        attr = base_layer_attr(module)
        inner = getattr(module, attr, None) if attr else None
        if not isinstance(inner, nn.Module):
            return module
        module = inner
    return module


def adapter_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters ``module`` declares as its own, by name relative to ``module``.

    peft's layers keep theirs in per-adapter ModuleDicts / ParameterDicts named by ``adapter_layer_names``.
    """
    if isinstance(module, AdapterLayer):
        out = {}
        for name in module.adapter_parameter_names:
            value = getattr(module, name)
            if isinstance(value, nn.Parameter):
                out[name] = value
            elif isinstance(value, nn.Module):
                out.update({f"{name}.{n}": p for n, p in value.named_parameters()})
        return out
    if _is_peft_layer(module):
        prefixes = tuple(f"{n}." for n in module.adapter_layer_names)
        return {n: p for n, p in module.named_parameters() if n.startswith(prefixes)}
    return {}


def adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, layer) for every adapter layer in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if m is not model and is_adapter_layer(m)]


def wrapped_base_names(model: nn.Module) -> set[str]:
    """Qualified names of the layers some wrapper holds as its base (already adapted: never wrap them again)."""
    out = set()
    for name, module in adapter_layers(model):
        attr = base_layer_attr(module)
        if attr:
            out.add(f"{name}.{attr}" if name else attr)
    return out


def owned_prefixes(model: nn.Module) -> tuple[str, ...]:
    """``"name."`` prefixes of every module that belongs to a method rather than the backbone: inserted modules
    whole, and each child of a wrapper other than its base (peft's ``lora_A`` ModuleDict, ...). Target resolution
    leaves names under them out, so one method never adapts another's layers."""
    out: list[str] = []
    for name, module in adapter_layers(model):
        prefix = f"{name}." if name else ""
        if is_inserted(module):
            out.append(prefix)
            continue
        attr = base_layer_attr(module)
        out += [f"{prefix}{child}." for child, _ in module.named_children() if child != attr]
    return tuple(out)


def mark_adapter_trainable(module: nn.Module) -> None:
    """Make the parameters ``module`` declares trainable (methods call this instead of naming them again)."""
    for p in adapter_parameters(module).values():
        p.requires_grad_(True)
