"""LoRA-C (arXiv 2410.16954): layer-wise low-rank adaptation of Conv2d, as loralib's ``ConvLoRA``.

dW = (B @ A).view(W.shape) * alpha / r with A: (r*k, Cin*k), B: (Cout/groups*k, r*k) -- low rank over the whole
layer rather than per kernel (contrast: ``peft_lora``). Three exact ways to compute the adapted conv
(docs/methods.md, "Exact cheaper forms"):

* ``materialize``: conv(x, W + dW). Works for every conv (grouped/depthwise included).
* ``branch`` (1x1, groups=1): base(x) + conv1x1(conv1x1(x, A, stride), B) * scale, a rank-r bottleneck.
  The frozen base conv then needs no weight gradient, which is where the training speed-up comes from.
* ``grouped`` (k>1, groups=1, Cin % k == 0): base(x) + conv1x1(z, B2) * scale with z = conv(x, A2, groups=k),
  A2 = A.view(r*k, Cin/k, k, k) shared by the k channel groups and B2[o, q*r*k + s] = B[o*k + q, s].
  Implemented by folding the k channel groups into the batch (x.view(N*k, Cin/k, H, W)) and convolving with A2
  once, which is the same arithmetic as the grouped conv with a repeated weight without copying the weight.

``auto`` chooses per layer and call the exact form measured faster (numbers above ``AUTO_BRANCH_MAX_PIXELS``).

Dropout > 0 acts on the input of the delta path only, so with dropout active (training) ``materialize``
becomes base(x) + conv(drop(x), dW) (it cannot fold dW into W any more); in eval it is conv(x, W + dW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PetlConfigError
from ..registry import option, register_method
from ..state import head_module, set_trainable
from ..layers import AdapterLayer, mark_adapter_trainable
from ._targets import replace_module, resolve_conv_targets

FORMS = ("auto", "materialize", "branch", "grouped")

# ``auto`` = the exact form that is faster for the layer, chosen per call (the answer depends on whether a
# gradient is needed and on the layer's output size). The rank-r branch is memory-bound (it re-reads the
# activation twice), so it only pays where the weight gradient it avoids (Cin*Cout per output pixel) dominates,
# i.e. on small feature maps: auto takes the branch for 1x1 convs whose output has at most AUTO_BRANCH_MAX_PIXELS
# pixels per image while a gradient is being taken. The measurements behind the threshold:
# docs/design-notes.md, "LoRA-C forms".
AUTO_BRANCH_MAX_PIXELS = 16


@dataclass
class LoraCOptions:
    """rank r, alpha (scale alpha/r), dropout on the delta path, fnmatch targets (None = default), forward form."""

    rank: int = option(4, "rank r of each layer's low-rank update (trainable parameters grow linearly in r)")
    alpha: float = option(8.0, 'scale: the update is multiplied by alpha / rank')
    dropout: float = option(0.0, "dropout on the low-rank path's input (0: none)")
    targets: tuple[str, ...] | None = option(
        None,
        'fnmatch patterns of the convs to adapt; none: the default targets (block + downsample convs, '
        'grouped convs skipped)')
    form: str = option(
        "auto",
        'forward form, all exact: auto (fastest per conv), materialize (W + BA), branch (separate low-rank '
        'convs), grouped')

    def __post_init__(self) -> None:
        validate_lora_options("lora_c", self.rank, self.alpha, self.dropout, self.targets)
        if self.form not in FORMS:
            raise PetlConfigError(f"lora_c.form must be one of {', '.join(FORMS)}, got {self.form!r}")


def validate_lora_options(method: str, rank: int, alpha: float, dropout: float,
                          targets: tuple[str, ...] | None) -> None:
    """Shared range checks of lora_c and peft_lora options."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise PetlConfigError(f"{method}.rank must be an integer >= 1, got {rank!r}")
    if not alpha > 0:
        raise PetlConfigError(f"{method}.alpha must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise PetlConfigError(f"{method}.dropout must be in [0, 1), got {dropout!r}")
    if targets is not None and (isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets)):
        raise PetlConfigError(f"{method}.targets must be a tuple of fnmatch patterns or None, got {targets!r}")


def applicable_forms(conv: nn.Conv2d) -> tuple[str, ...]:
    """The exact forms a conv supports (``materialize`` always)."""
    k = conv.kernel_size[0]
    forms = ["materialize"]
    # subclasses (timm's Conv2dSame pads in forward) keep their own padding logic: materialize only
    if type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros" and \
            isinstance(conv.padding, tuple):
        if k == 1:
            forms.append("branch")
        elif conv.in_channels % k == 0:
            forms.append("grouped")
    return tuple(forms)


class LoRAConv2d(AdapterLayer, nn.Module):
    """A frozen Conv2d (``self.base``) plus loralib's ConvLoRA delta; mergeable for zero inference overhead."""

    base_attr = "base"
    adapter_parameter_names = ("lora_A", "lora_B")

    def __init__(self, base: nn.Conv2d, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0,
                 form: str = "auto") -> None:
        super().__init__()
        if not isinstance(base, nn.Conv2d):
            raise PetlConfigError(f"LoRAConv2d wraps an nn.Conv2d, got {type(base).__name__}")
        kh, kw = base.kernel_size
        if kh != kw:
            raise PetlConfigError(f"LoRA-C needs a square kernel (dW = (B @ A).view(W.shape) uses one k), "
                                  f"got kernel_size {base.kernel_size}")
        if form not in FORMS:
            raise PetlConfigError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        forms = applicable_forms(base)
        if form != "auto" and form not in forms:
            raise PetlConfigError(f"form {form!r} does not apply to a {kh}x{kw} conv with groups={base.groups}, "
                                  f"Cin={base.in_channels}; exact forms for it: {', '.join(forms)}")
        self.base = base
        self.rank, self.alpha, self.k = rank, alpha, kh
        self.scale = alpha / rank
        self.form = form
        self.forms = forms
        cin, cout, k = base.in_channels, base.out_channels, kh
        w = base.weight
        self.lora_A = nn.Parameter(w.new_zeros(rank * k, cin * k))
        self.lora_B = nn.Parameter(w.new_zeros(cout // base.groups * k, rank * k))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    # conv geometry, so code that reads e.g. ``block.conv2.stride`` keeps working on a wrapped conv
    @property
    def in_channels(self) -> int:
        return self.base.in_channels

    @property
    def out_channels(self) -> int:
        return self.base.out_channels

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.base.kernel_size

    @property
    def stride(self) -> tuple[int, ...]:
        return self.base.stride

    @property
    def padding(self) -> tuple[int, ...] | str:
        return self.base.padding

    @property
    def dilation(self) -> tuple[int, ...]:
        return self.base.dilation

    @property
    def groups(self) -> int:
        return self.base.groups

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, form={self.form}, merged={self.merged}"

    def delta_weight(self) -> Tensor:
        """dW = (B @ A).view(W.shape) * alpha / r (the reference definition)."""
        return (self.lora_B @ self.lora_A).view(self.base.weight.shape) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold dW into the base weight in place; forward then runs the base conv alone."""
        if not self.merged:
            self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract dW again (restores W to float rounding) so training can continue."""
        if self.merged:
            self.base.weight.sub_(self.delta_weight().to(self.base.weight.dtype))
            self.merged = False

    def _delta_active_dropout(self) -> bool:
        return self.training and isinstance(self.dropout, nn.Dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            if self.training and torch.is_grad_enabled() and self.lora_A.requires_grad:
                raise RuntimeError("LoRA-C layer is merged: its A and B would get no gradient; call petl.unmerge(model) "
                                   "before training (merge is for inference)")
            return self.base(x)
        form = self.form_for(x)
        if form == "materialize":
            if self._delta_active_dropout():
                return self.base(x) + self._conv_with(self.dropout(x), self.delta_weight(), with_bias=False)
            return self._conv_with(x, self.base.weight + self.delta_weight(), with_bias=True)
        return self.base(x) + self._low_rank_path(self.dropout(x), form)

    def _conv_with(self, x: Tensor, weight: Tensor, with_bias: bool) -> Tensor:
        """The base conv with another weight; subclasses (Conv2dSame) run their own forward for their padding."""
        b = self.base
        bias = b.bias if with_bias or b.bias is None else torch.zeros_like(b.bias)
        if type(b) is nn.Conv2d:
            return b._conv_forward(x, weight, bias)
        params = {"weight": weight} if b.bias is None else {"weight": weight, "bias": bias}
        return torch.func.functional_call(b, params, (x,))

    def form_for(self, x: Tensor) -> str:
        """The form this call uses: the explicit one, or ``auto``'s measured choice (see AUTO_BRANCH_MAX_PIXELS)."""
        if self.form != "auto":
            return self.form
        if "branch" in self.forms and torch.is_grad_enabled() and \
                (self.lora_A.requires_grad or self.lora_B.requires_grad):
            b = self.base
            h = (x.shape[-2] + 2 * b.padding[0] - 1) // b.stride[0] + 1
            w = (x.shape[-1] + 2 * b.padding[1] - 1) // b.stride[1] + 1
            if h * w <= AUTO_BRANCH_MAX_PIXELS:
                return "branch"
        return "materialize"

    def _low_rank_path(self, x: Tensor, form: str) -> Tensor:
        """conv(x, dW) without building dW (forms ``branch`` and ``grouped``)."""
        b, r, k = self.base, self.rank, self.k
        if form == "branch":
            a = self.lora_A.view(r, b.in_channels, 1, 1)
            z = F.conv2d(x, a, None, b.stride, b.padding, b.dilation)
            return F.conv2d(z, self.lora_B.view(b.out_channels, r, 1, 1) * self.scale)
        # grouped: fold the k channel groups into the batch and share A2 across them
        n, cin, h, w = x.shape
        a2 = self.lora_A.view(r * k, cin // k, k, k)
        z = F.conv2d(x.reshape(n * k, cin // k, h, w), a2, None, b.stride, b.padding, b.dilation)
        z = z.reshape(n, k * r * k, z.shape[-2], z.shape[-1])
        b2 = self.lora_B.view(b.out_channels, k * r * k, 1, 1)   # B2[o, q*r*k + s] = B[o*k + q, s]
        return F.conv2d(z, b2 * self.scale)


def lora_c_parameters(conv: nn.Conv2d, rank: int) -> int:
    """LoRA-C parameters of one conv: r*k*k*(Cin + Cout/groups)."""
    k = conv.kernel_size[0]
    return rank * k * k * (conv.in_channels + conv.out_channels // conv.groups)


@register_method("lora_c", LoraCOptions)
def lora_c(model: nn.Module, options: LoraCOptions) -> None:
    """LoRA-C: layer-wise low-rank deltas on the block convs (merge for zero inference cost)."""
    names = resolve_conv_targets(model, options.targets)
    layers = []
    for name in names:  # build every layer first, so a form error leaves the model untouched
        layers.append((name, LoRAConv2d(model.get_submodule(name), rank=options.rank, alpha=options.alpha,
                                        dropout=options.dropout, form=options.form)))
    for name, layer in layers:
        replace_module(model, name, layer)
        mark_adapter_trainable(layer)
    set_trainable(head_module(model))
