"""Partial fine-tuning: the last ``stages`` resolution stages of the backbone train in full, the rest is frozen.

Stages are the backbone's resolution stages below the stem, counted from the top (stride 4, 8, 16, 32):

* ResNets (torchvision or timm): ``layer1`` .. ``layer4``; ``stages=1`` trains ``layer4`` (+ head).
* timm EfficientNet / MobileNet-style models (``blocks`` + ``feature_info``): the blocks between two
  ``feature_info`` reductions form one stage, so Lite0's stages are blocks.1 (stride 4), blocks.2 (8),
  blocks.3-4 (16) and blocks.5-6 plus the ``conv_head`` / ``bn2`` after them (32). blocks.0 and the stem run at
  stride 2 and always stay frozen.

BatchNorm policy (option ``bn_stats``): ``train`` (default) lets the BatchNorm layers inside the trained stages
update their running statistics, as full fine-tuning does with the whole network; ``frozen`` keeps every
BatchNorm at its pretrained statistics like the other parameter-efficient methods (its affine still trains).
BatchNorms of the frozen stages always keep their statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..batchnorm import set_bn_policy
from ..errors import PetlConfigError
from ..registry import option, register_method
from ..state import head_module, head_name, set_trainable

BN_STATS = ("train", "frozen")
MAX_STAGES = 4


@dataclass
class PartialFtOptions:
    """``stages`` = how many of the last resolution stages train (1-4); ``bn_stats`` = train / frozen (see module)."""

    stages: int = option(1, "how many of the last resolution stages train in full (1-4)")
    bn_stats: str = option("train", "BatchNorm statistics of the trained stages: train (updated) or frozen (pretrained)")

    def __post_init__(self) -> None:
        if not isinstance(self.stages, int) or isinstance(self.stages, bool) or not 1 <= self.stages <= MAX_STAGES:
            raise PetlConfigError(f"partial_ft.stages must be an integer in 1..{MAX_STAGES}, got {self.stages!r}")
        if self.bn_stats not in BN_STATS:
            raise PetlConfigError(f"partial_ft.bn_stats must be one of {', '.join(BN_STATS)}, got {self.bn_stats!r}")


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """Module names of each resolution stage below the stem, stride 4 .. 32 (the last one is the top stage)."""
    children = dict(model.named_children())
    if all(f"layer{i}" in children for i in range(1, 5)):
        return [[f"layer{i}"] for i in range(1, 5)]
    info = getattr(model, "feature_info", None)
    blocks = children.get("blocks")
    if isinstance(blocks, nn.Sequential) and info is not None:
        entries = [dict(e) for e in (info.info if hasattr(info, "info") else info)]
        ends = [int(e["module"].split(".")[1]) for e in entries if str(e.get("module", "")).startswith("blocks.")]
        if len(ends) >= MAX_STAGES + 1:
            ends = ends[-(MAX_STAGES + 1):]
            stages = [[f"blocks.{j}" for j in range(lo + 1, hi + 1)] for lo, hi in zip(ends, ends[1:])]
            head = head_name(model)
            names = list(children)
            after = [n for n in names[names.index("blocks") + 1:]
                     if n != head and any(True for _ in children[n].parameters())]
            stages[-1] += after
            return stages
    raise PetlConfigError(f"partial_ft knows the stages of ResNets (layer1..layer4) and of timm EfficientNet-style "
                          f"models (blocks + feature_info); {type(model).__name__} is neither")


@register_method("partial_ft", PartialFtOptions)
def partial_ft(model: nn.Module, options: PartialFtOptions) -> None:
    """Partial fine-tuning: the last ``stages`` resolution stages (1-4) and the head train in full."""
    chosen = [n for stage in backbone_stages(model)[-options.stages:] for n in stage]
    modules = [model.get_submodule(n) for n in chosen]
    for module in modules:
        set_trainable(module)
    set_trainable(head_module(model))
    if options.bn_stats == "train":
        bns = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        set_bn_policy(model, "train", modules=bns)
