"""Undo a failed ``petl.apply``: a shallow snapshot of a model's structure and training flags.

``apply`` freezes the model, installs BatchNorm hooks and lets the method replace modules; a method that raises
half-way would otherwise leave a frozen, half-modified model with no method recorded. The snapshot records, for
every module, its attribute dict with shallow copies of the dicts in it (children, parameters, buffers, hooks),
plus each parameter's ``requires_grad`` and petl's record; ``restore`` puts them back in place (the same dict
objects, so hook handles taken earlier keep working). Tensor values changed in place and other mutable
attributes mutated in place are not restored: methods insert modules, they do not edit base weights.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .state import STATE_ATTR, PetlState, get_state


class ModelSnapshot:
    """What ``take`` saw; ``restore`` returns the model (and every module it had) to it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules: list[tuple[nn.Module, dict[str, Any]]] = [(m, _copy_dict(m.__dict__)) for m in model.modules()]
        self.requires_grad = [(p, p.requires_grad) for m, _ in self.modules for p in m._parameters.values()
                              if p is not None]
        # parameters referenced by the record (``trained``) are kept as the same objects, not copied
        self.state: PetlState = copy.deepcopy(get_state(model), memo={id(p): p for p in model.parameters()})

    def restore(self) -> None:
        for module, saved in self.modules:
            _restore_dict(module.__dict__, saved)
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)
        memo = {id(p): p for p in self.model.parameters()}
        object.__setattr__(self.model, STATE_ATTR, copy.deepcopy(self.state, memo=memo))


def _copy_dict(attrs: dict[str, Any]) -> dict[str, Any]:
    """Shallow copy of a module's ``__dict__`` that also copies the dicts it holds (``_modules``, hooks, ...)."""
    return {k: (v, dict(v)) if isinstance(v, dict) else (v, None) for k, v in attrs.items()}


def _restore_dict(attrs: dict[str, Any], saved: dict[str, Any]) -> None:
    for key in [k for k in attrs if k not in saved]:
        del attrs[key]
    for key, (obj, contents) in saved.items():
        if contents is not None:
            obj.clear()
            obj.update(contents)
        attrs[key] = obj
