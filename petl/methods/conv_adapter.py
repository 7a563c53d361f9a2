"""Conv-Adapter (arXiv 2208.07463; official code Hhhhhhao/Conv-Adapter, class ``ConvAdapter``, "Design 2 v4").

Adapter: k x k conv Cin -> w with groups = w (w = Cin / adapt_size, each hidden channel sees adapt_size input
channels), stride of the adapted conv, padding k // 2; ReLU; 1 x 1 conv w -> Cout; times a learnable per-channel
scale (1, Cout, 1, 1) initialised to 1. Both convs carry a bias, as in the official code (``nn.Conv2d``'s
default); the official ResNet initialises every conv with kaiming_normal_(mode="fan_out", nonlinearity="relu")
and biases with 0, which is what ``ConvAdapter.reset_parameters`` does. methods.md's parameter counts
(ResNet-50, adapt_size 8: 194,944) are weights + scales; the biases add w + Cout per adapter (4,248 at
adapt_size 8), so the trainable total is larger by that much.

Placement
* ``resnet`` (``mode="auto"`` on any model with ResNet blocks and ``targets=None``; torchvision or timm, Bottleneck or BasicBlock,
  stride-2 blocks included): parallel to conv2. With h = act1(bn1(conv1(x))), a Bottleneck computes
  act2(bn2(conv2(h))) + adapter(h) before conv3 (the official code); a BasicBlock computes
  bn2(conv2(h)) + adapter(h) before the residual add (the official BasicBlock is broken -- it uses ``out``
  before assigning it -- so this is the Bottleneck rule carried over). The adapter is the block's child
  ``conv_adapter``.
* ``generic`` (``mode="auto"`` on anything else, e.g. EfficientNet-Lite0, or when ``targets`` is given): the adapter runs parallel to each
  chosen conv, out = conv(x) + adapter(x). Chosen convs: the fnmatch ``targets`` over conv names, default every
  depth-wise k x k conv (groups = Cin = Cout, k > 1; EfficientNet's ``conv_dw``). Cin must be divisible by
  adapt_size. Adapters live in ``model.conv_adapters`` keyed by the conv name with "." -> "__" (a conv's parent
  may be an ``nn.Sequential``, where a new child would join the sequence).

Mechanism (why hooks on the *parent*): the adapter's input and output points are modules that other methods
replace -- lora_c wraps conv2 in ``LoRAConv2d``, gpaf replaces act2 -- in either order of application. So the
permanent hooks sit on the block (generic: the conv's parent module), which nobody replaces. At each forward the
parent's pre-hook looks up the modules *currently* at ``conv2`` and ``act2`` / ``bn2`` (generic: the conv's
attribute) by name and attaches a pre-hook to the source capturing conv2's input h; that capture arms a one-shot
forward hook on the sink returning output + adapter(h), removed as soon as it fires (so a sink module called
several times per block, e.g. a GPAF unit shared across act1/act2/act3, adds the adapter once, after conv2 only).
The parent's forward hook (``always_call=True``, so also after an
exception) removes them and drops h, so no tensor outlives the forward. The hook objects are plain picklable /
deep-copyable classes holding the adapter module. Not safe under ``nn.DataParallel``: its replicas share the
hook dicts and the hooks hold the original adapter (wrong device, threads racing on the one-shot hooks); use
DistributedDataParallel (one process, one model copy per GPU) or a single device.

Cost of the generic mode: beside a depth-wise conv (EfficientNet's ``conv_dw``, on the block's expanded width C)
the adapter's grouped k x k conv costs as much as the depth-wise conv itself (C * k * k multiply-adds per pixel)
and its 1 x 1 conv C / adapt_size * C (more than the depth-wise conv wherever C > k * k * adapt_size, i.e. in
all of Lite0's blocks but the narrowest); with the frozen backbone's
weight gradients saved, a training step on Lite0 still counts about as many FLOPs as full fine-tuning
(``benchmarks.flops``), so generic mode is not expected to train much faster than full fine-tuning. The extra
work is the method's definition; there is no exact form with fewer FLOPs (a larger adapt_size or other targets
change the method). On CPU the grouped conv runs in an exact faster form (``ConvAdapter.grouped_conv``).

Also: an extra trainable BatchNorm2d(num_features) before global pooling (``avgpool`` / timm ``global_pool``
becomes ``nn.Sequential(norm, pool)``), and dropout before the head (the head becomes
``nn.Sequential(Dropout(p), head)`` under its old name). Backbone BatchNorm stays frozen; adapters, extra BN and
head train.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from .. import _grouped_conv_native
from ..errors import PetlConfigError
from ..registry import option, register_method
from ..resnet_blocks import is_bottleneck, resnet_blocks
from ..state import get_state, head_module, head_name, set_trainable
from ..layers import AdapterLayer, get_base_layer, mark_adapter_trainable
from ._targets import replace_module

MODES = ("auto", "resnet", "generic")
ADAPTER_ATTR = "conv_adapter"          # child name of the adapter inside a ResNet block
GENERIC_CONTAINER = "conv_adapters"    # top-level ModuleDict of generic-mode adapters
POOL_NAMES = ("avgpool", "global_pool")
# Inputs (H x W) that take conv1's CPU depth-wise form (AMD EPYC, oneDNN; results/benchmarks/README.md, "Conv-Adapter's
# fast forms"): at least 4 x 4 (on 2 x 2 maps it measured 0.5-0.8x of the grouped conv) and, at stride 1, at most
# 32 x 32: on larger stride-1 maps its Cin-wide intermediate measured slower under glibc's default malloc, and the
# whole 224 px training step was slower without this bound, though with steady malloc settings the form alone wins.
MIN_DEPTHWISE_PIXELS = 16
MAX_DEPTHWISE_PIXELS_STRIDE_1 = 32 * 32


@dataclass
class ConvAdapterOptions:
    """adapt_size (Cin / hidden width), adapter kernel size, head dropout, extra BN, placement mode, targets."""

    adapt_size: int = option(
        8,
        "reduction factor: the adapter's hidden width is Cin / adapt_size (8: the paper's ResNet-50 setting)")
    kernel_size: int = option(3, "kernel size of the adapter's grouped conv (odd)")
    head_dropout: float = option(0.2, 'dropout before the classifier (official 0.2)')
    extra_bn: bool = option(True, 'add a trainable BatchNorm before global pooling (official)')
    mode: str = option(
        "auto",
        "placement: auto (resnet on ResNet blocks without targets, else generic), resnet (parallel to each "
        "block's conv2), generic (parallel to each depth-wise conv or to targets)")
    targets: tuple[str, ...] | None = option(
        None,
        'fnmatch patterns of the convs to adapt (generic mode); none: the default placement')

    def __post_init__(self) -> None:
        if not isinstance(self.adapt_size, int) or isinstance(self.adapt_size, bool) or self.adapt_size < 1:
            raise PetlConfigError(f"conv_adapter.adapt_size must be an integer >= 1, got {self.adapt_size!r}")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise PetlConfigError(f"conv_adapter.kernel_size must be an odd integer >= 1 (padding k // 2 keeps "
                                  f"the size), got {self.kernel_size!r}")
        if not 0 <= self.head_dropout < 1:
            raise PetlConfigError(f"conv_adapter.head_dropout must be in [0, 1), got {self.head_dropout!r}")
        if self.mode not in MODES:
            raise PetlConfigError(f"conv_adapter.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.targets is not None:
            if isinstance(self.targets, str) or not all(isinstance(t, str) and t for t in self.targets):
                raise PetlConfigError(f"conv_adapter.targets must be a tuple of fnmatch patterns or None, "
                                      f"got {self.targets!r}")
            self.targets = tuple(self.targets)
            if self.mode == "resnet":
                raise PetlConfigError("conv_adapter.targets applies to mode='generic' (or 'auto' on a non-ResNet); "
                                      "mode='resnet' always adapts conv2 of every block")


class ConvAdapter(AdapterLayer, nn.Module):
    """conv_kxk(Cin -> w, groups=w, stride) -> ReLU -> conv_1x1(w -> Cout), times a per-channel scale."""

    base_attr = None   # inserted whole: its convs are the method's own, low-rank methods never target them
    adapter_parameter_names = ("conv1", "act", "conv2", "scale")

    def __init__(self, in_channels: int, out_channels: int, adapt_size: int = 8, kernel_size: int = 3,
                 stride: int | tuple[int, int] = 1) -> None:
        super().__init__()
        if in_channels % adapt_size:
            raise PetlConfigError(f"adapter input channels {in_channels} are not divisible by adapt_size "
                                  f"{adapt_size}")
        width = in_channels // adapt_size
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size, stride=stride, padding=kernel_size // 2,
                               groups=width, bias=True)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(width, out_channels, 1, bias=True)
        self.scale = nn.Parameter(torch.ones(1, out_channels, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: kaiming normal (fan_out, relu) weights, zero biases, scale 1 (not a zero init)."""
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        with torch.no_grad():
            self.scale.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.act(self.grouped_conv(x))) * self.scale

    def output_shape(self, x: Tensor) -> torch.Size:
        """Shape of ``self(x)`` without computing it (k // 2 padding keeps the size up to the stride)."""
        conv = self.conv1
        size = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
                zip(x.shape[-2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
        return torch.Size((x.shape[0], self.conv2.out_channels, *size))

    def add_to(self, base: Tensor, x: Tensor) -> Tensor:
        """``base + self(x)``, with the 1 x 1 conv, its bias, the scale and the sum in one matrix product.

        Why: the adapter's output has the adapted conv's full width and resolution, and as conv -> multiply ->
        add each step is a pass over it in the forward and again in the backward; on CPU that memory traffic,
        not arithmetic, sets the adapter's cost. ``base + (W z + b) * s`` is computed as ``base + [z, 1] [s W,
        s b]^T``: ``addmm`` over pixels for channels_last tensors, ``baddbmm`` over the batch for contiguous
        ones. Same function, rounded in another order. The adapter is called as a module (its hooks run) when
        it or its 1 x 1 conv carries a hook or the 1 x 1 conv is not a plain nn.Conv2d.
        """
        conv = self.conv2
        if self._forward_hooks or self._forward_pre_hooks or not _is_plain_conv(conv):
            return base + self(x)
        z = self.act(self.grouped_conv(x))
        scale = self.scale.reshape(-1, 1)
        weight = conv.weight.reshape(conv.out_channels, -1) * scale
        if conv.bias is not None:
            weight = torch.cat([weight, conv.bias.reshape(-1, 1) * scale], dim=1)
        batch, width, height, breadth = z.shape
        channels = conv.out_channels
        if base.is_contiguous(memory_format=torch.channels_last):   # z is 1 / adapt_size of base: a copy is cheap
            pixels = z.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, width)
            if conv.bias is not None:
                pixels = torch.cat([pixels, pixels.new_ones(pixels.shape[0], 1)], dim=1)
            out = torch.addmm(base.permute(0, 2, 3, 1).reshape(-1, channels), pixels, weight.t())
            return out.view(batch, height, breadth, channels).permute(0, 3, 1, 2)
        if base.is_contiguous():
            columns = z.contiguous().reshape(batch, width, height * breadth)
            if conv.bias is not None:
                columns = torch.cat([columns, columns.new_ones(batch, 1, height * breadth)], dim=1)
            out = torch.baddbmm(base.reshape(batch, channels, -1), weight.expand(batch, -1, -1), columns)
            return out.view(batch, channels, height, breadth)
        return base + self.conv2(z) * self.scale

    def grouped_conv(self, x: Tensor) -> Tensor:
        """``conv1(x)``; on CPU computed by petl's fused kernel or as a depth-wise conv and a sum per group.

        Why: each group of conv1 maps adapt_size input channels to one output channel, a grouped-conv shape that
        oneDNN runs 1.2-2.2x slower on CPU than a depth-wise conv of the same multiply-adds (results/benchmarks/
        ab_conv_adapter_grouped.txt). On a channels_last input the fused kernel (``petl._grouped_conv_native``)
        computes it in one pass per direction; elsewhere on CPU the depth-wise conv (Cin -> Cin) plus a sum over
        each group's channels (``depthwise_form``) does, within the input sizes of ``MIN_DEPTHWISE_PIXELS`` and
        ``MAX_DEPTHWISE_PIXELS_STRIDE_1``. All are the same function -- output channel g is
        sum_i w[g, i] * x[g * adapt_size + i] -- so outputs and gradients differ only in the order of the float
        additions. conv1 is called as a module (its hooks run) whenever it is not a plain nn.Conv2d without
        hooks, and on other devices, where neither form is measured.
        """
        conv = self.conv1
        if x.device.type != "cpu" or not _is_plain_conv(conv) or conv.groups == conv.in_channels:
            return conv(x)
        if _grouped_conv_native.applies(conv, x):
            return _grouped_conv_native.grouped_conv(conv, x)
        pixels = x.shape[-2] * x.shape[-1]
        if pixels < MIN_DEPTHWISE_PIXELS or (conv.stride == (1, 1) and pixels > MAX_DEPTHWISE_PIXELS_STRIDE_1):
            return conv(x)
        return depthwise_form(conv, x)


def _is_plain_conv(module: nn.Module) -> bool:
    """A plain nn.Conv2d without hooks: the fast forms may compute it with functional ops (no hook is skipped)."""
    return type(module) is nn.Conv2d and not module._forward_hooks and not module._forward_pre_hooks


def depthwise_form(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a grouped conv, as a depth-wise conv (Cin -> Cin) and a sum over each group's channels."""
    channels = conv.in_channels
    depthwise = F.conv2d(x, conv.weight.reshape(channels, 1, *conv.kernel_size), None, conv.stride, conv.padding,
                         conv.dilation, channels)
    out = depthwise.unflatten(1, (conv.groups, channels // conv.groups)).sum(2)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def adapter_weight_count(adapter: ConvAdapter) -> int:
    """Weights + scale of one adapter (conv biases excluded): the quantity methods.md tabulates."""
    return adapter.conv1.weight.numel() + adapter.conv2.weight.numel() + adapter.scale.numel()


# --- hooks ----------------------------------------------------------------------------------------------------

class _Capture:
    """One-shot pre-hook on the source module: remember its input h for the adapter."""

    def __init__(self, slot: "ParallelSlot") -> None:
        self.slot = slot

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.slot.pending = args[0]
        self.slot.arm_sink()


class _AddAdapter:
    """One-shot forward hook on the sink module, armed by the capture: output + adapter(h), then removed."""

    def __init__(self, slot: "ParallelSlot") -> None:
        self.slot = slot

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        slot = self.slot
        slot.disarm_sink()
        h, slot.pending = slot.pending, None
        if h is None:
            raise RuntimeError(f"conv_adapter: {slot.sink!r} ran before {slot.source!r} captured the adapter input")
        shape = slot.adapter.output_shape(h)
        if shape != output.shape:
            raise RuntimeError(f"conv_adapter: adapter output {tuple(shape)} does not match "
                               f"{slot.sink!r} output {tuple(output.shape)} (stride / padding of the adapted conv "
                               f"not reproducible by a k//2-padded adapter)")
        return slot.adapter.add_to(output, h)


class ParallelSlot:
    """Permanent hooks of one adapter on the parent module; see the module docstring ("Mechanism").

    ``source``: attribute of the parent whose input feeds the adapter; ``sink``: attribute whose output gets
    adapter(h) added. Both are looked up at every forward, so later replacements of those modules keep working.
    """

    def __init__(self, adapter: ConvAdapter, source: str, sink: str) -> None:
        self.adapter = adapter
        self.source = source
        self.sink = sink
        self.pending: Tensor | None = None
        self.handles: list[RemovableHandle] = []
        self.sink_module: nn.Module | None = None
        self.sink_handle: RemovableHandle | None = None

    def enter(self, parent: nn.Module, args: tuple) -> None:
        self.exit(parent, args, None)   # stale hooks from an interrupted forward
        self.sink_module = getattr(parent, self.sink)
        self.handles = [getattr(parent, self.source).register_forward_pre_hook(_Capture(self))]

    def arm_sink(self) -> None:
        if self.sink_handle is None and self.sink_module is not None:
            self.sink_handle = self.sink_module.register_forward_hook(_AddAdapter(self))

    def disarm_sink(self) -> None:
        if self.sink_handle is not None:
            self.sink_handle.remove()
            self.sink_handle = None

    def exit(self, parent: nn.Module, args: tuple, output: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.disarm_sink()
        self.sink_module = None
        self.pending = None


class _Enter:
    def __init__(self, slot: ParallelSlot) -> None:
        self.slot = slot

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.slot.enter(module, args)


class _Exit:
    def __init__(self, slot: ParallelSlot) -> None:
        self.slot = slot

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.slot.exit(module, args, output)


def attach(parent: nn.Module, adapter: ConvAdapter, source: str, sink: str) -> ParallelSlot:
    """Run ``adapter`` from the input of ``parent.<source>`` into the output of ``parent.<sink>``."""
    slot = ParallelSlot(adapter, source, sink)
    parent.register_forward_pre_hook(_Enter(slot))
    parent.register_forward_hook(_Exit(slot), always_call=True)
    return slot


def slots(model: nn.Module) -> list[ParallelSlot]:
    """Every Conv-Adapter slot installed in ``model`` (for inspection and tests)."""
    return [hook.slot for m in model.modules() for hook in m._forward_pre_hooks.values() if isinstance(hook, _Enter)]


# --- geometry and placement -----------------------------------------------------------------------------------

def conv_geometry(module: nn.Module) -> nn.Conv2d:
    """The nn.Conv2d that defines a (possibly wrapped) conv's channels and stride: itself, or the base layer
    under any adapter wrappers (LoRA-C's, peft's; ``petl.layers.get_base_layer``)."""
    base = get_base_layer(module)
    if isinstance(base, nn.Conv2d):
        return base
    raise PetlConfigError(f"conv_adapter: expected a Conv2d (or a wrapped one with .base), got {type(module).__name__}")


def conv_like_modules(model: nn.Module) -> dict[str, nn.Conv2d]:
    """name -> geometry conv for every conv of ``model``; a wrapped conv is listed under the wrapper's name."""
    out: dict[str, nn.Conv2d] = {}
    wrapped: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in wrapped or not name:
            continue
        if isinstance(module, nn.Conv2d):
            out[name] = module
            continue
        inner = get_base_layer(module)
        if inner is not module and isinstance(inner, nn.Conv2d):
            out[name] = inner
            wrapped.update(id(m) for m in module.modules() if m is not module)
    adapter_convs = {id(c) for m in model.modules() if isinstance(m, ConvAdapter) for c in (m.conv1, m.conv2)}
    return {n: c for n, c in out.items() if id(c) not in adapter_convs}


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1 and max(conv.kernel_size) > 1


def generic_targets(model: nn.Module, targets: tuple[str, ...] | None) -> list[str]:
    """Conv names for generic mode: fnmatch ``targets`` (each must match), default every depth-wise k x k conv."""
    convs = conv_like_modules(model)
    if targets is None:
        chosen = [n for n, c in convs.items() if _is_depthwise(c)]
        if not chosen:
            raise PetlConfigError("conv_adapter generic mode: the model has no depth-wise k x k conv (the default "
                                  "targets); name the convs with targets=('pattern', ...)")
        return chosen
    chosen_set: set[str] = set()
    for pattern in targets:
        hits = [n for n in convs if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            names = list(convs)
            raise PetlConfigError(f"conv_adapter.targets pattern {pattern!r} matches no conv; conv names look like "
                                  f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}")
        chosen_set.update(hits)
    return [n for n in convs if n in chosen_set]


def _new_adapter(name: str, conv: nn.Conv2d, options: ConvAdapterOptions) -> ConvAdapter:
    if conv.in_channels % options.adapt_size:
        raise PetlConfigError(f"conv_adapter: {name} has {conv.in_channels} input channels, not divisible by "
                              f"adapt_size={options.adapt_size}; choose an adapt_size dividing it")
    return ConvAdapter(conv.in_channels, conv.out_channels, options.adapt_size, options.kernel_size, conv.stride)


def _apply_resnet(model: nn.Module, options: ConvAdapterOptions) -> list[ConvAdapter]:
    adapters = []
    for block_name, block in resnet_blocks(model):
        if hasattr(block, ADAPTER_ATTR):
            raise PetlConfigError(f"conv_adapter is already applied to {block_name} (apply it once)")
        adapter = _new_adapter(f"{block_name}.conv2", conv_geometry(block.conv2), options)
        block.add_module(ADAPTER_ATTR, adapter)
        attach(block, adapter, source="conv2", sink="act2" if is_bottleneck(block) else "bn2")
        adapters.append(adapter)
    return adapters


def _apply_generic(model: nn.Module, options: ConvAdapterOptions) -> list[ConvAdapter]:
    if hasattr(model, GENERIC_CONTAINER):
        raise PetlConfigError("conv_adapter is already applied to this model (apply it once)")
    names = generic_targets(model, options.targets)
    modules = dict(model.named_modules())
    geometry = conv_like_modules(model)
    container = nn.ModuleDict()
    for name in names:
        container[name.replace(".", "__")] = _new_adapter(name, geometry[name], options)
    model.add_module(GENERIC_CONTAINER, container)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        attach(modules[parent_name], container[name.replace(".", "__")], source=attr, sink=attr)
    return list(container.values())


def _num_features(head: nn.Module) -> int:
    linear = head if isinstance(head, nn.Linear) else next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    if linear is None:
        raise PetlConfigError(f"conv_adapter.extra_bn needs the feature width; the head {type(head).__name__} has "
                              f"no nn.Linear (set extra_bn=False)")
    return linear.in_features


class PooledNorm(AdapterLayer, nn.Sequential):
    """The official extra BN in front of the global pool: wraps the pool (its base) with the method's own BN."""

    base_attr = "pool"
    adapter_parameter_names = ("norm",)


def _insert_extra_bn(model: nn.Module) -> nn.BatchNorm2d:
    """BatchNorm2d before global pooling, as ``model.norm`` in the official ResNet (wrapped with the pool)."""
    pool_name = next((n for n in POOL_NAMES if isinstance(getattr(model, n, None), nn.Module)), None)
    if pool_name is None:
        raise PetlConfigError(f"conv_adapter.extra_bn: no global pooling module ({' / '.join(POOL_NAMES)}) at the "
                              f"model's top level; set extra_bn=False")
    bn = nn.BatchNorm2d(_num_features(head_module(model)))
    replace_module(model, pool_name, PooledNorm(OrderedDict(norm=bn, pool=getattr(model, pool_name))))
    return bn


@register_method("conv_adapter", ConvAdapterOptions)
def conv_adapter(model: nn.Module, options: ConvAdapterOptions) -> None:
    """Conv-Adapter: a depth-wise-separable adapter parallel to each block's conv2 (+ extra BN, head dropout)."""
    has_blocks = bool(resnet_blocks(model))
    mode = options.mode if options.mode != "auto" else ("resnet" if has_blocks and options.targets is None
                                                        else "generic")
    if mode == "resnet" and not has_blocks:
        raise PetlConfigError(f"conv_adapter mode='resnet' needs ResNet blocks; {type(model).__name__} has none, "
                              f"use mode='generic' (or 'auto')")
    adapters = _apply_resnet(model, options) if mode == "resnet" else _apply_generic(model, options)
    for adapter in adapters:
        mark_adapter_trainable(adapter)
    if options.extra_bn:
        set_trainable(_insert_extra_bn(model))
    name, head = head_name(model), head_module(model)
    if options.head_dropout > 0:
        head = nn.Sequential(nn.Dropout(options.head_dropout), head)
        replace_module(model, name, head)
        get_state(model).head = name     # the wrapped head keeps the head's name
    set_trainable(head)
