"""HF peft's LoRA on Conv2d ("LoRA (peft)"): the kernel-wise baseline LoRA-C is compared against.

peft factorises each conv as lora_B(lora_A(x)) with lora_A = Conv2d(Cin, r, k) and lora_B = Conv2d(r, Cout, 1):
r * (Cin*k*k + Cout) parameters per conv, versus LoRA-C's r*k*k*(Cin + Cout). Both methods adapt the same convs
(``petl.methods._targets``), so ``matched_peft_rank`` can give peft the same parameter budget.

ResNet-50, the 52 default convs: per unit of rank LoRA-C has 109,440 parameters and peft 79,232, so the matched
peft rank for LoRA-C rank 1 / 2 / 4 / 8 / 16 is 1 / 3 / 6 / 11 / 22 (``matched_peft_rank``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from peft import LoraConfig, get_peft_model
from peft.tuners.lora import layer as peft_lora_layer
from torch import nn

from ..errors import PetlConfigError
from ..registry import option, register_method
from ..state import head_module, set_trainable
from ._targets import resolve_conv_targets
from .lora_c import lora_c_parameters, validate_lora_options

# per unit of rank on ResNet-50's 52 default targets: sum of Cin*k*k + Cout (peft), of k*k*(Cin + Cout) (LoRA-C)
PEFT_PARAMS_PER_RANK_RESNET50 = 79_232
LORA_C_PARAMS_PER_RANK_RESNET50 = 109_440


@dataclass
class PeftLoraOptions:
    """rank r, alpha (scale alpha/r), dropout before lora_A, fnmatch targets.

    targets None = LoRA-C's default convs (which leave grouped / depth-wise convs out: peft cannot adapt them),
    so both methods adapt exactly the same layers.
    """

    rank: int = option(4, "rank r of peft's kernel-wise Conv2d LoRA (matched_peft_rank gives LoRA-C's budget)")
    alpha: float = option(8.0, 'scale: the update is multiplied by alpha / rank')
    dropout: float = option(0.0, 'dropout before lora_A (0: none)')
    targets: tuple[str, ...] | None = option(
        None,
        "fnmatch patterns of the convs to adapt; none: LoRA-C's default convs")

    def __post_init__(self) -> None:
        validate_lora_options("peft_lora", self.rank, self.alpha, self.dropout, self.targets)


def peft_parameters(conv: nn.Conv2d, rank: int) -> int:
    """peft LoRA parameters of one (groups=1) conv: r * (Cin*k*k + Cout)."""
    kh, kw = conv.kernel_size
    return rank * (conv.in_channels * kh * kw + conv.out_channels)


def _convs(model_or_targets: nn.Module | Sequence[nn.Conv2d], targets: Sequence[str] | None) -> list[nn.Conv2d]:
    if isinstance(model_or_targets, nn.Module):
        return [model_or_targets.get_submodule(n) for n in resolve_conv_targets(model_or_targets, targets)]
    convs = list(model_or_targets)
    if not convs or not all(isinstance(c, nn.Conv2d) for c in convs):
        raise PetlConfigError("matched_peft_rank takes a model or a non-empty sequence of nn.Conv2d layers")
    return convs


def matched_peft_rank(model_or_targets: nn.Module | Sequence[nn.Conv2d], lora_c_rank: int,
                      targets: Sequence[str] | None = None) -> int:
    """The peft rank whose parameter count is closest to LoRA-C's at ``lora_c_rank`` on the same convs.

    Used for matched-budget comparisons. On ResNet-50 (52 default convs) LoRA-C costs 109,440 parameters per rank
    and peft 79,232, so LoRA-C rank 1 / 2 / 4 / 8 / 16 matches peft rank 1 / 3 / 6 / 11 / 22 (ties: lower rank).
    """
    if lora_c_rank < 1:
        raise PetlConfigError(f"lora_c_rank must be >= 1, got {lora_c_rank}")
    convs = _convs(model_or_targets, targets)
    budget = sum(lora_c_parameters(c, lora_c_rank) for c in convs)
    per_rank = sum(peft_parameters(c, 1) for c in convs)
    low = max(1, budget // per_rank)
    return min((low, low + 1), key=lambda r: (abs(r * per_rank - budget), r))


@register_method("peft_lora", PeftLoraOptions)
def peft_lora(model: nn.Module, options: PeftLoraOptions) -> None:
    """LoRA (peft): HF peft's kernel-wise Conv2d LoRA on the same convs as LoRA-C (the matched baseline)."""
    names = resolve_conv_targets(model, options.targets)
    grouped = [n for n in names if model.get_submodule(n).groups > 1]
    if grouped:
        raise PetlConfigError(f"peft's Conv2d LoRA needs rank divisible by groups and cannot merge grouped convs; "
                              f"{len(grouped)} target(s) are grouped (e.g. {grouped[0]}); pass targets that "
                              f"exclude them")
    trainable_before = [p for p in model.parameters() if p.requires_grad]
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=list(names), bias="none")
    get_peft_model(model, config)   # mutates ``model`` in place; the PeftModel wrapper is dropped
    injected = [n for n, m in model.named_modules() if isinstance(m, peft_lora_layer.Conv2d)]
    if len(injected) != len(names):
        raise PetlConfigError(f"peft injected {len(injected)} lora.Conv2d layers for {len(names)} targets")
    for p in trainable_before:        # peft froze everything but its own layers: restore composition
        p.requires_grad_(True)
    set_trainable(head_module(model))
