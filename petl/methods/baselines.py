"""Reference points every parameter-efficient method is compared against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import PetlConfigError
from ..registry import option, register_method
from ..state import head_module, set_trainable


@dataclass
class NoOptions:
    """This method takes no options."""


@register_method("linear_probe", NoOptions)
def linear_probe(model: nn.Module, options: NoOptions) -> None:
    """Train the classification head only; the backbone is a fixed feature extractor (the floor)."""
    set_trainable(head_module(model))


@register_method("full_ft", NoOptions, bn_policy="train")
def full_ft(model: nn.Module, options: NoOptions) -> None:
    """Fine-tune every parameter, BatchNorm statistics included (the ceiling the PEFT methods chase)."""
    set_trainable(model)


@register_method("bitfit", NoOptions)
def bitfit(model: nn.Module, options: NoOptions) -> None:
    """Train biases, BatchNorm affine parameters and the head (BitFit adapted to CNNs)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            set_trainable(module)
        elif getattr(module, "bias", None) is not None and isinstance(module.bias, nn.Parameter):
            module.bias.requires_grad_(True)
    set_trainable(head_module(model))


@dataclass
class TwoStageOptions:
    """Head-only warm-up (``head_epochs`` at ``head_lr``), then the whole network, head included, at the small
    ``lr`` with a cosine schedule (the head does not keep ``head_lr`` in stage 2)."""

    head_epochs: int = option(5, 'head-only warm-up epochs (stage 1)')
    head_lr: float = option(1e-3, 'learning rate of the head during the warm-up')
    lr: float = option(
        3e-5,
        "learning rate of stage 2 (everything, head included; cosine schedule); replaces the run's lr")

    def __post_init__(self) -> None:
        if self.head_epochs < 0:
            raise PetlConfigError(f"two_stage.head_epochs must be >= 0, got {self.head_epochs}")
        if not (0 < self.lr <= 1 and 0 < self.head_lr <= 1):
            raise PetlConfigError("two_stage.lr and two_stage.head_lr must be in (0, 1]")


def two_stage_recipe(options: TwoStageOptions) -> dict[str, Any]:
    """Training-recipe overrides the engine applies for this method (see benchmarks.engine). The engine's
    schedule uses ``head_lr`` for the head-only warm-up only, so stage 2 runs every parameter at ``lr``."""
    return {"warmup_head_epochs": options.head_epochs, "head_lr": options.head_lr, "lr": options.lr,
            "schedule": "cosine"}


@register_method("two_stage", TwoStageOptions, bn_policy="train", recipe=two_stage_recipe)
def two_stage(model: nn.Module, options: TwoStageOptions) -> None:
    """Two-stage medical fine-tuning: head warm-up (lr 1e-3), then everything, head too, at a small lr (cosine)."""
    set_trainable(model)


NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


@register_method("norm_tuning", NoOptions)
def norm_tuning(model: nn.Module, options: NoOptions) -> None:
    """Train the normalisation layers' affine parameters (weight and bias) and the head; statistics stay frozen.

    How it differs from ``bitfit``: BitFit trains every bias (conv / linear biases too) and the BatchNorm affine,
    but of other norms (GroupNorm, LayerNorm) only the bias; norm_tuning trains every norm's weight and bias and
    no other bias. On ResNet-50 and EfficientNet-Lite0 no conv has a bias and every norm is a BatchNorm, so the
    two train exactly the same parameters there (ResNet-50: 53,120 + head; tests/test_family.py checks this);
    they differ on backbones with biased convs or LayerNorm / GroupNorm (ConvNeXt, a user's own model) and after
    a method that inserted biased convs (Conv-Adapter), whose biases BitFit trains and norm_tuning does not.
    """
    norms = [m for m in model.modules() if isinstance(m, NORM_LAYERS) and any(True for _ in m.parameters())]
    if not norms:
        raise PetlConfigError(f"norm_tuning trains normalisation layers' affine parameters; this "
                              f"{type(model).__name__} has no norm layer with affine parameters (use linear_probe)")
    for module in norms:
        set_trainable(module)
    set_trainable(head_module(model))
