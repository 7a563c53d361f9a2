"""Give torchvision ResNet blocks one activation module per position.

torchvision's Bottleneck / BasicBlock call a single ``self.relu`` two or three times, so a learnable activation
cannot be placed at one position without changing the others. ``split_shared_activations`` swaps such blocks
to subclasses whose forward calls ``act1``/``act2``/``act3`` (timm's names); the computation is unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet


class SplitActBottleneck(tv_resnet.Bottleneck):
    """torchvision Bottleneck with separate act1 / act2 / act3 modules (same arithmetic)."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.act3(out + identity)


class SplitActBasicBlock(tv_resnet.BasicBlock):
    """torchvision BasicBlock with separate act1 / act2 modules (same arithmetic)."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.act2(out + identity)


_SPLIT = {tv_resnet.Bottleneck: (SplitActBottleneck, ("act1", "act2", "act3")),
          tv_resnet.BasicBlock: (SplitActBasicBlock, ("act1", "act2"))}


def split_shared_activations(model: nn.Module) -> int:
    """Split every torchvision block's shared ``relu`` into per-position modules; returns blocks changed."""
    changed = 0
    for module in model.modules():
        target = _SPLIT.get(type(module))
        if target is None:
            continue
        cls, names = target
        relu = module.relu
        for name in names:
            setattr(module, name, nn.ReLU(inplace=getattr(relu, "inplace", False)))
        del module.relu
        module.__class__ = cls
        changed += 1
    return changed


def is_bottleneck(module: nn.Module) -> bool:
    """ResNet bottleneck block (torchvision after splitting, or timm): conv1 -> conv2 -> conv3, act2 after bn2.

    Convs may already be wrapped by a method (LoRA-C), so only the attribute names are checked."""
    return all(isinstance(getattr(module, n, None), nn.Module) for n in ("conv1", "conv2", "conv3", "bn2", "act2"))


def is_basic_block(module: nn.Module) -> bool:
    """ResNet basic block (torchvision or timm): two kxk convs, no conv3."""
    return all(isinstance(getattr(module, n, None), nn.Module) for n in ("conv1", "conv2", "bn2", "act2")) \
        and not hasattr(module, "conv3")


def resnet_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, block) for every ResNet block, in forward order."""
    return [(n, m) for n, m in model.named_modules() if is_bottleneck(m) or is_basic_block(m)]
