"""Which Conv2d layers a low-rank method adapts (shared by ``lora_c`` and ``peft_lora``).

Sharing one resolver is what makes the LoRA-C vs peft-LoRA comparison fair: both adapt exactly the same convs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from ..errors import PetlConfigError
from ..layers import owned_prefixes, wrapped_base_names
from ..resnet_blocks import resnet_blocks


def candidate_convs(model: nn.Module) -> list[str]:
    """Qualified names of every plain (not yet adapted) backbone nn.Conv2d, in module order.

    Convs some wrapper already holds as its base, and convs inside modules another method inserted (e.g.
    Conv-Adapter's), are left out, as the adapter-layer contract (``petl.layers``) declares them, so composing
    methods never wraps one method's parameters in another.
    """
    inserted, wrapped = owned_prefixes(model), wrapped_base_names(model)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in wrapped
            and not n.startswith(inserted)]


def default_conv_targets(model: nn.Module) -> list[str]:
    """The official LoRA-C placement.

    ResNets (any model with ResNet blocks): each block's conv1/conv2/conv3 and the conv(s) of its downsample
    (52 convs on ResNet-50; the stem conv is excluded). Any other CNN (EfficientNet, ...): every Conv2d except
    the first one in module order, which is taken to be the stem. Grouped convs (depth-wise, ResNeXt's conv2) are
    left out by default in both cases: a rank-r update of a depth-wise k x k conv costs r*k*k*(C + 1) parameters,
    more than the conv's own C*k*k weights at any rank >= 1, ResNeXt's 32-group conv2 is in the same regime,
    and peft cannot adapt grouped convs at all, so both LoRA methods keep the same targets (name grouped convs
    in ``targets`` to adapt them with LoRA-C anyway).
    """
    convs = candidate_convs(model)
    modules = dict(model.named_modules())
    conv_set = {n for n in convs if modules[n].groups == 1}
    blocks = resnet_blocks(model)
    if blocks:
        out: list[str] = []
        for block_name, block in blocks:
            prefix = f"{block_name}." if block_name else ""
            for attr in ("conv1", "conv2", "conv3"):
                if f"{prefix}{attr}" in conv_set:
                    out.append(f"{prefix}{attr}")
            downsample = getattr(block, "downsample", None)
            if isinstance(downsample, nn.Module):
                out += [f"{prefix}downsample.{n}" for n, m in downsample.named_modules()
                        if n and f"{prefix}downsample.{n}" in conv_set]
        return out
    return [n for n in convs[1:] if n in conv_set]


def resolve_conv_targets(model: nn.Module, targets: Sequence[str] | None) -> list[str]:
    """Qualified Conv2d names to adapt: the default placement, or the convs matched by fnmatch ``targets``.

    Every pattern must match at least one Conv2d, so a typo cannot silently adapt nothing.
    """
    convs = candidate_convs(model)
    if not convs:
        raise PetlConfigError("model has no (unadapted) nn.Conv2d layer to adapt")
    if targets is None:
        chosen = default_conv_targets(model)
        if not chosen:
            raise PetlConfigError(f"default targets found no conv to adapt; convs are {', '.join(convs[:5])}, ...")
        return chosen
    return select_by_patterns(convs, targets, "targets", "Conv2d", "conv names")


def select_by_patterns(names: Sequence[str], patterns: Sequence[str], option: str, kind: str,
                       shown_as: str = "names") -> list[str]:
    """``names`` (in their order) matched by any fnmatch pattern; a pattern that matches none is an error naming
    ``option``, the ``kind`` of layer it looked for and a few real names, so a typo cannot silently adapt nothing."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise PetlConfigError(f"{option} pattern {pattern!r} matches no {kind}; {shown_as} look like "
                                  f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at qualified ``name`` inside ``model``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
