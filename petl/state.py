"""What petl remembers about a model: how its backbone was built and which methods were applied.

The record lives on the model as ``model.petl_state`` (a plain dataclass, so it survives ``deepcopy``) and is
what ``save_adapter`` writes as JSON and ``load_adapter`` replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import PetlConfigError

STATE_ATTR = "petl_state"


@dataclass
class PetlState:
    backbone: dict[str, Any] | None = None          # build_backbone arguments, None for a user's own model
    head: str | None = None                          # qualified name of the classification head module
    methods: list[dict[str, Any]] = field(default_factory=list)   # [{"method": name, "options": {...}}]
    bn_policy: str = "frozen"
    # The parameters the applied methods train, as ``apply`` left them. ``trained_state`` (what adapter files and
    # the engine's best-epoch copies hold) reads this rather than ``requires_grad`` alone, so a phase that freezes
    # part of the set for a while (the engine's head-only warm-up) cannot drop adapters from a saved state.
    trained: list[nn.Parameter] = field(default_factory=list, repr=False)


def get_state(model: nn.Module) -> PetlState:
    """The model's petl record, created empty on first use."""
    state = model.__dict__.get(STATE_ATTR)
    if state is None:
        state = PetlState()
        object.__setattr__(model, STATE_ATTR, state)
    return state


def head_name(model: nn.Module) -> str:
    """Qualified name of the classifier: recorded by build_backbone, else timm's / torchvision's conventions."""
    state = get_state(model)
    if state.head:
        return state.head
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    candidates = [cfg.get("classifier")] if isinstance(cfg, dict) else []
    candidates += ["fc", "classifier", "head.fc", "head"]
    modules = dict(model.named_modules())
    for name in candidates:
        if name and name in modules and any(True for _ in modules[name].parameters()):
            return name
    raise PetlConfigError("cannot find the model's classification head (looked for fc, classifier, head); "
                          "build the model with petl.build_backbone or name it via petl.set_head(model, NAME)")


def set_head(model: nn.Module, name: str) -> None:
    """Declare which submodule is the classifier of a user's own model."""
    if name not in dict(model.named_modules()):
        raise PetlConfigError(f"model has no submodule {name!r}")
    get_state(model).head = name


def head_module(model: nn.Module) -> nn.Module:
    return model.get_submodule(head_name(model))


def set_trainable(module: nn.Module, trainable: bool = True) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def freeze(model: nn.Module) -> None:
    set_trainable(model, False)
