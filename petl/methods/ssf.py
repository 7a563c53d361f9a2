"""SSF, Scale-and-Shift Features (Lian et al., NeurIPS 2022; official code github dongzelian/SSF).

Definition: a learnable per-channel scale gamma and shift beta, y = gamma * x + beta, inserted after backbone
operations; the backbone stays frozen, only gamma, beta and the head train. Being affine per channel, each SSF
folds into the linear operation before it at inference, so the tuned network costs exactly the plain one.

Placement. The official CNN code (models/convnext.py) puts an SSF after every conv (stem, depth-wise convs,
downsampling convs), after every normalisation layer and after both MLP linears. In a conv -> BatchNorm -> act
network (ResNet, EfficientNet) an SSF directly after a conv is followed by a per-channel affine BatchNorm, so
"after the conv" and "after the BN" compose into one per-channel affine: petl places ONE SSF after every
BatchNorm of the backbone (before its activation; for timm's fused ``BatchNormAct2d`` between the normalisation
and the activation), the downsample BNs and the stem BN included. ResNet-50: 53 BNs, 2 * 26,560 = 53,120
parameters (+ head); the count is twice the BN channel count on any backbone. SSF after the global pool (the
official ConvNeXt's last SSF) is left out: it is absorbed by the trainable linear head.

Init: gamma = 1, beta = 0, so the model equals the pretrained one exactly at step 0. (The official code draws
gamma ~ N(1, 0.02), beta ~ N(0, 0.02); petl keeps the exact identity the slot's other methods have.)

Merge: with y = gamma * BN(x) + beta and BN(x) = w * x_hat + b, the BN's affine becomes w' = gamma * w,
b' = gamma * b + beta (in train and eval mode alike, since the batch statistics act before the affine); the
BN then folds into its conv as usual. ``unmerge`` restores the saved w, b exactly.

How it differs from ``norm_tuning``: with the BN statistics frozen (petl's policy for both), the functions SSF
reaches on a conv-BN network are exactly those of tuning the BN affine (gamma * w and gamma * b + beta span
every (w', b')); SSF is a multiplicative re-parametrisation (the scale's step is relative to the pretrained w, the
shift's is additive, weight decay pulls gamma towards 0 rather than w), so its training dynamics differ while
its reachable set does not. Where a network has operations without a following BN it would add new degrees of
freedom; ResNet-50 and EfficientNet-Lite0 have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import PetlConfigError
from ..layers import AdapterLayer, owned_prefixes, mark_adapter_trainable, wrapped_base_names
from ..registry import option, register_method
from ..state import head_module, set_trainable
from ._targets import replace_module, select_by_patterns


@dataclass
class SsfOptions:
    """fnmatch ``targets`` over BatchNorm names (None = every backbone BatchNorm, the stem's included)."""

    targets: tuple[str, ...] | None = option(None, "fnmatch patterns of the BatchNorm layers SSF follows (None: "
                                                   "every backbone BatchNorm, the stem's included)")

    def __post_init__(self) -> None:
        if self.targets is not None and (isinstance(self.targets, str) or not self.targets
                                         or not all(isinstance(t, str) and t for t in self.targets)):
            raise PetlConfigError(f"ssf.targets must be a non-empty tuple of fnmatch patterns or None, "
                                  f"got {self.targets!r}")


class SSFNorm(AdapterLayer, nn.Module):
    """A frozen BatchNorm (``self.base``) followed by SSF's per-channel scale and shift, mergeable into it."""

    base_attr = "base"
    adapter_parameter_names = ("ssf_scale", "ssf_shift")

    def __init__(self, base: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        if not isinstance(base, nn.modules.batchnorm._BatchNorm):
            raise PetlConfigError(f"SSFNorm wraps a BatchNorm layer, got {type(base).__name__}")
        if base.weight is None or base.bias is None:
            raise PetlConfigError("SSF folds into the BatchNorm's affine parameters; this BatchNorm has "
                                  "affine=False")
        self.base = base
        self.ssf_scale = nn.Parameter(torch.ones_like(base.weight))
        self.ssf_shift = nn.Parameter(torch.zeros_like(base.bias))
        self.merged = False
        self._saved: tuple[Tensor, Tensor] | None = None

    @property
    def num_features(self) -> int:
        return self.base.num_features

    def folded(self) -> tuple[Tensor, Tensor]:
        """The BN affine that includes SSF: (gamma * w, gamma * b + beta)."""
        return self.ssf_scale * self.base.weight, self.ssf_scale * self.base.bias + self.ssf_shift

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            if self.training and torch.is_grad_enabled() and self.ssf_scale.requires_grad:
                raise RuntimeError("SSF layer is merged: its scale and shift would get no gradient; call "
                                   "petl.unmerge(model) before training (merge is for inference)")
            return self.base(x)
        weight, bias = self.folded()
        # the base's own forward (hooks, timm's fused activation) with the folded affine
        return torch.func.functional_call(self.base, {"weight": weight, "bias": bias}, (x,))

    @torch.no_grad()
    def merge(self) -> None:
        """Write gamma * w, gamma * b + beta into the BN (zero inference overhead); the originals are kept."""
        if not self.merged:
            weight, bias = self.folded()
            self._saved = (self.base.weight.detach().clone(), self.base.bias.detach().clone())
            self.base.weight.copy_(weight)
            self.base.bias.copy_(bias)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the saved BN affine back (exactly)."""
        if self.merged and self._saved is not None:
            self.base.weight.copy_(self._saved[0])
            self.base.bias.copy_(self._saved[1])
            self._saved = None
            self.merged = False


def ssf_positions(model: nn.Module, targets: tuple[str, ...] | None = None) -> list[str]:
    """Qualified names of the backbone BatchNorms SSF follows (not already wrapped, not inside inserted modules)."""
    modules = dict(model.named_modules())
    inserted, wrapped = owned_prefixes(model), wrapped_base_names(model)
    norms = [n for n, m in modules.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and not n.startswith(inserted) and n not in wrapped]
    if not norms:
        raise PetlConfigError(f"ssf scales and shifts after BatchNorm layers (and folds into them); this "
                              f"{type(model).__name__} has none")
    if targets is None:
        return norms
    return select_by_patterns(norms, targets, "ssf.targets", "BatchNorm")


def ssf_parameters(model: nn.Module, targets: tuple[str, ...] | None = None) -> int:
    """SSF's parameter count on ``model`` (without the head): twice the channels of the BNs it follows."""
    return sum(2 * model.get_submodule(n).num_features for n in ssf_positions(model, targets))


@register_method("ssf", SsfOptions)
def ssf(model: nn.Module, options: SsfOptions) -> None:
    """SSF: per-channel scale and shift after every BatchNorm (identity at init, merged into the BN; head trains)."""
    layers = [(n, SSFNorm(model.get_submodule(n))) for n in ssf_positions(model, options.targets)]
    for name, layer in layers:
        replace_module(model, name, layer)
        mark_adapter_trainable(layer)
    set_trainable(head_module(model))
