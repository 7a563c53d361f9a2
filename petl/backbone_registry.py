"""Name -> backbone registry, as timm's ``register_model`` + ``pretrained_cfg``.

A backbone is one function that builds the bare architecture (random init) plus a ``BackboneConfig`` saying
where its parts are and how its ImageNet weights are obtained. ``build_backbone`` reads only the config, so a
new backbone is one decorated function in one file and nothing else in petl or the benchmarks names it:

    @petl.register_backbone("toy", classifier="fc", stem="conv", feature_dim=8,
                            mean=(0.5,) * 3, std=(0.5,) * 3)
    def toy() -> nn.Module: ...

The lookups (``available_backbones``, ``backbone_config``, ``backbone_mean_std``) live in ``petl.backbones``, next
to the built-in registrations, so they always see them without this module importing that one.
Names that are not registered fall through to timm (any ``timm.list_models()`` name), whose own
``pretrained_cfg`` then plays the part of the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import DuplicateRegistrationError, PetlConfigError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class BackboneConfig:
    """What ``build_backbone`` and the benchmarks need to know about one backbone.

    ``classifier`` / ``stem``: qualified names of the ImageNet classifier (an nn.Linear, replaced by the task head)
    and of the first conv (adapted for ``in_chans != 3``). ``feature_dim``: the classifier's input width.
    ``mean`` / ``std``: the input normalisation the pretrained weights expect (``--norm backbone``); for a
    from-scratch architecture, the normalisation of the recipe it reproduces. ``blocks`` / ``activations``:
    regular expressions (full match) on qualified module names of the repeated blocks and of the activation
    modules, so tools that walk a backbone (placement, CAM layers, analyses) need no per-architecture code.
    ``pretrained``: returns the raw ImageNet state dict, None where the architecture has no pretrained weights.
    ``checkpoint_filter``: maps that raw state dict onto the model's keys (``(state_dict, model) -> state_dict``),
    as timm's ``pretrained_filter_fn``; Lite0's package file uses its own key names. ``cam_layer``: qualified name
    of the last spatial feature map before pooling, the layer Grad-CAM weighs (``petl.backbones.cam_target_layer``).
    """

    name: str
    builder: Callable[[], nn.Module]
    classifier: str
    stem: str
    feature_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    blocks: str = ""
    activations: str = ""
    pretrained: Callable[[], StateDict] | None = None
    checkpoint_filter: Callable[[StateDict, nn.Module], StateDict] | None = None
    cam_layer: str = ""
    description: str = ""

    def block_names(self, model: nn.Module) -> list[str]:
        """Qualified names of the blocks in ``model`` (module order)."""
        return _matching(model, self.blocks)

    def activation_names(self, model: nn.Module) -> list[str]:
        """Qualified names of the activation modules in ``model`` (module order); ``nn.Identity`` slots (timm's
        linear bottleneck ``bn3.act``) are no activation and are left out."""
        return [n for n in _matching(model, self.activations)
                if not isinstance(model.get_submodule(n), nn.Identity)]


def _matching(model: nn.Module, pattern: str) -> list[str]:
    if not pattern:
        return []
    regex = re.compile(pattern)
    return [n for n, _ in model.named_modules() if n and regex.fullmatch(n)]


_BACKBONES: dict[str, BackboneConfig] = {}


def register_backbone(name: str, *, classifier: str, stem: str, feature_dim: int, mean: tuple[float, ...],
                      std: tuple[float, ...], blocks: str = "", activations: str = "",
                      pretrained: Callable[[], StateDict] | None = None,
                      checkpoint_filter: Callable[[StateDict, nn.Module], StateDict] | None = None,
                      cam_layer: str = ""
                      ) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator on a zero-argument function returning the bare (randomly initialised) architecture."""
    if len(mean) != len(std):
        raise PetlConfigError(f"backbone {name!r}: mean and std need the same length, got {len(mean)} and {len(std)}")

    def decorator(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _BACKBONES:
            raise DuplicateRegistrationError(f"backbone {name!r} is already registered; choose another name")
        doc = (fn.__doc__ or "").strip().splitlines()
        _BACKBONES[name] = BackboneConfig(name=name, builder=fn, classifier=classifier, stem=stem,
                                          feature_dim=feature_dim, mean=tuple(mean), std=tuple(std), blocks=blocks,
                                          activations=activations, pretrained=pretrained,
                                          checkpoint_filter=checkpoint_filter, cam_layer=cam_layer,
                                          description=doc[0] if doc else "")
        return fn

    return decorator
