"""GPAF, the learnable-activation slot: replace chosen ReLUs of a frozen CNN by a learnable unit.

Only the units' parameters (and the head) train. Each candidate in ``petl.activations`` equals ReLU at init, so
the adapted network computes the pretrained function at step 0 (exactly for ``prelu`` / ``spline``, within a
stated bound for ``rational`` / ``acon_c``).

Positions
* ResNets (any model with blocks found by ``petl.resnet_blocks``, torchvision or timm): ``stem`` is the
  top-level stem activation (torchvision ``relu``, timm ``act1``); ``act1`` / ``act2`` / ``act3`` are the
  block activations (after bn1, after bn2, after the residual add; a BasicBlock has act1 / act2 only, so
  ``act3`` simply selects nothing there). ``all`` = every position.
* Any other CNN (EfficientNet-Lite0, ...): only ``where=("all",)``, which replaces every ``nn.ReLU`` /
  ``nn.ReLU6`` module. A ReLU6 is replaced by ``ClampedAt6(unit)`` = min(unit(x), 6), still exactly ReLU6 at
  init (EfficientNet-Lite0 uses ReLU6 throughout).

Sharing (granularity of the learnable parameters)
* ``shared``: one scalar unit reused at every chosen position.
* ``stage``: one scalar unit per (stage, position); a ResNet stage is ``layer1`` .. ``layer4`` (the stem is its
  own stage). For other CNNs a site's name is read as ``<stage>.<i>.<block j>.<position>`` (timm's
  ``blocks.3.1.bn1.act`` -> stage ``blocks.3``, block ``blocks.3.1``, position ``bn1.act``); a name without
  numeric parts (the stem / head activations) is its own stage.
* ``block``: one scalar unit per (block, position), i.e. per replaced activation.
* ``channel``: one unit per (block, position) with per-channel parameters. The channel count comes from the
  BatchNorm preceding the activation (ResNet bn1 / bn2 / bn3, the stem's bn1; elsewhere the BatchNorm that owns
  the activation, timm's ``BatchNormAct2d``, else the last BatchNorm before it in module order).

Units are placed under the replaced activation's own name (``layer1.0.act2``), so adapter files load by
replaying ``apply`` on a fresh model. ``MethodSpec.regularizer`` adds each unit's ``regularization()`` times its
weight (the spline's TV2 penalty times ``tv2_weight``) to the training loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..activations import ClampedAt6, available_activations, get_activation, is_activation_unit
from ..errors import PetlConfigError
from ..registry import option, register_method
from ..resnet_blocks import resnet_blocks
from ..state import head_module, set_trainable
from ..layers import mark_adapter_trainable

POSITIONS = ("stem", "act1", "act2", "act3")
WHERE_CHOICES = POSITIONS + ("all",)
SHARINGS = ("shared", "stage", "block", "channel")
_REPLACEABLE = (nn.ReLU, nn.ReLU6)


@dataclass
class GpafOptions:
    """Candidate ``kind``, positions ``where``, ``sharing`` granularity, and the candidates' own knobs.

    knots / knot_range / tv2_weight: ``spline`` (odd knot count on [-knot_range, knot_range], weight of its TV2
    penalty); acon_beta: ``acon_c``'s initial beta (max deviation from ReLU 0.2785 / beta).
    """

    kind: str = option(
        "prelu",
        'candidate activation: prelu, spline (exact ReLU at init), rational (Pade fit to ReLU), acon_c, or '
        'one added with petl.activations.register_activation')
    where: tuple[str, ...] = option(
        ("act1", "act2", "act3"),
        'positions replaced: stem, act1, act2, act3 (ResNets) or all (every ReLU/ReLU6)')
    sharing: str = option(
        "channel",
        'parameter sharing: shared (one unit), stage, block, or channel (one per channel)')
    knots: int = option(21, 'spline only: odd number of knots on [-knot_range, knot_range]')
    knot_range: float = option(3.0, 'spline only: half-width of the knot interval')
    tv2_weight: float = option(1e-4, 'spline only: weight of the second-order total-variation penalty')
    acon_beta: float = option(100.0, 'acon_c only: initial beta (max deviation from ReLU is 0.2785 / beta)')

    def __post_init__(self) -> None:
        get_activation(self.kind)  # raises, listing the registered candidates
        if isinstance(self.where, str) or not self.where or not all(isinstance(w, str) for w in self.where):
            raise PetlConfigError(f"gpaf.where must be a non-empty tuple of positions from "
                                  f"{', '.join(WHERE_CHOICES)}, got {self.where!r}")
        self.where = tuple(self.where)
        bad = [w for w in self.where if w not in WHERE_CHOICES]
        if bad:
            raise PetlConfigError(f"unknown gpaf position(s) {', '.join(map(repr, bad))}; "
                                  f"choose from {', '.join(WHERE_CHOICES)}")
        if self.sharing not in SHARINGS:
            raise PetlConfigError(f"unknown gpaf sharing {self.sharing!r}; choose one of {', '.join(SHARINGS)}")
        make_unit(self, 1)  # validates the kind-specific knobs now rather than at apply time


def make_unit(options: GpafOptions, num_channels: int) -> nn.Module:
    """A fresh unit of ``options.kind`` with ``num_channels`` channels and the knobs its class declares."""
    cls = get_activation(options.kind)
    knobs = {k: getattr(options, k) for k in getattr(cls, "knobs", ())}
    return cls(num_channels, **knobs)


@dataclass
class Site:
    """One activation to replace: where it lives and how sharing groups it."""

    name: str
    parent: nn.Module
    attr: str
    stage: str
    block: str
    position: str
    channels: int | None


def _channels(bn: Any) -> int | None:
    return getattr(bn, "num_features", None) if isinstance(bn, nn.modules.batchnorm._BatchNorm) else None


def resnet_sites(model: nn.Module, where: tuple[str, ...]) -> list[Site]:
    """The ResNet positions named in ``where`` (``all`` = every position)."""
    wanted = set(POSITIONS) if "all" in where else set(where)
    sites: list[Site] = []
    if "stem" in wanted:
        stem_attr = next((a for a in ("relu", "act1") if isinstance(getattr(model, a, None), _REPLACEABLE)), None)
        if stem_attr is None and "all" not in where:
            raise PetlConfigError("gpaf position 'stem': the model has no top-level stem activation "
                                  "(torchvision 'relu' / timm 'act1')")
        if stem_attr is not None:
            sites.append(Site(stem_attr, model, stem_attr, "stem", "stem", "stem", _channels(getattr(model, "bn1", None))))
    for block_name, block in resnet_blocks(model):
        for pos in ("act1", "act2", "act3"):
            if pos not in wanted or not hasattr(block, pos):
                continue
            stage = block_name.rpartition(".")[0] or block_name
            sites.append(Site(f"{block_name}.{pos}", block, pos, stage, block_name, pos,
                              _channels(getattr(block, f"bn{pos[-1]}", None))))
    return sites


def _split_generic_name(name: str) -> tuple[str, str, str]:
    """(stage, block, position) of a non-ResNet activation name, see the module docstring."""
    parts = name.split(".")
    numeric = [i for i, p in enumerate(parts) if p.isdigit()]
    if not numeric:
        return name, name, ""
    stage_end = numeric[0]
    block_end = numeric[1] if len(numeric) > 1 else numeric[0]
    return ".".join(parts[:stage_end + 1]), ".".join(parts[:block_end + 1]), ".".join(parts[block_end + 1:])


def generic_sites(model: nn.Module) -> list[Site]:
    """Every nn.ReLU / nn.ReLU6 module of a non-ResNet backbone (the classifier head's are not backbone units)."""
    modules = dict(model.named_modules())
    head_ids = {id(m) for m in head_module(model).modules()}
    sites: list[Site] = []
    last_bn: nn.Module | None = None
    for name, module in modules.items():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            last_bn = module
        if not isinstance(module, _REPLACEABLE) or not name or id(module) in head_ids:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name]
        channels = _channels(parent) or _channels(last_bn)
        stage, block, position = _split_generic_name(name)
        sites.append(Site(name, parent, attr, stage, block, position, channels))
    return sites


def _group_key(site: Site, sharing: str) -> tuple[str, ...]:
    if sharing == "shared":
        return ("shared",)
    if sharing == "stage":
        return (site.stage, site.position)
    return (site.block, site.position, site.name)


def gpaf_units(model: nn.Module) -> list[nn.Module]:
    """The distinct GPAF units of ``model`` (a shared unit once)."""
    return [m for m in model.modules() if is_activation_unit(m)]


def gpaf_regularizer(model: nn.Module) -> Tensor:
    """Sum over distinct units of ``penalty_weight * regularization()`` (the spline's weighted TV2 penalty)."""
    terms = []
    for unit in gpaf_units(model):
        weight = float(getattr(unit, "penalty_weight", 0.0))
        penalty = unit.regularization() if weight and hasattr(unit, "regularization") else None
        if penalty is not None:
            terms.append(weight * penalty)
    if terms:
        return torch.stack(terms).sum()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros((), device=device)


@register_method("gpaf", GpafOptions, regularizer=gpaf_regularizer)
def gpaf(model: nn.Module, options: GpafOptions) -> None:
    """Learnable activations (GPAF slot): chosen ReLUs become a unit equal to ReLU at init; units + head train."""
    is_resnet = bool(resnet_blocks(model))
    if is_resnet:
        sites = resnet_sites(model, options.where)
    elif "all" in options.where:
        if set(options.where) != {"all"}:
            raise PetlConfigError(f"gpaf.where={options.where!r}: this model has no ResNet blocks, so positions "
                                  f"stem/act1/act2/act3 do not exist; use where=('all',)")
        sites = generic_sites(model)
    else:
        raise PetlConfigError(f"gpaf.where={options.where!r}: positions stem/act1/act2/act3 exist only in ResNets; "
                              f"for a {type(model).__name__} use where=('all',) (every ReLU / ReLU6)")
    if not sites:
        raise PetlConfigError(f"gpaf found no activation to replace at {options.where!r}")
    for site in sites:
        current = getattr(site.parent, site.attr)
        if not isinstance(current, _REPLACEABLE):
            raise PetlConfigError(f"gpaf replaces nn.ReLU / nn.ReLU6 only (so the unit equals the pretrained "
                                  f"activation at init); {site.name} is {type(current).__name__}")
        if options.sharing == "channel" and site.channels is None:
            raise PetlConfigError(f"gpaf sharing='channel' needs the channel count of {site.name} (from a preceding "
                                  f"BatchNorm) but none was found; use sharing='block'")

    units: dict[tuple[str, ...], nn.Module] = {}
    for site in sites:
        key = _group_key(site, options.sharing)
        if key not in units:
            units[key] = make_unit(options, site.channels if options.sharing == "channel" else 1)
        unit = units[key]
        current = getattr(site.parent, site.attr)
        setattr(site.parent, site.attr, ClampedAt6(unit) if isinstance(current, nn.ReLU6) else unit)
    for unit in units.values():
        mark_adapter_trainable(unit)
    set_trainable(head_module(model))


__all__ = ["GpafOptions", "gpaf", "gpaf_regularizer", "gpaf_units", "make_unit", "available_activations",
           "POSITIONS", "SHARINGS"]
