"""HF peft's conv-capable tuners, on the same convs as LoRA-C, at budgets matched to LoRA-C's.

One shared injection path (``inject_peft``) serves every tuner: resolve LoRA-C's targets
(``petl.methods._targets``), refuse grouped convs, let ``get_peft_model`` wrap exactly those convs, check that it
wrapped all of them with the tuner's Conv2d layer, undo peft's freezing of what earlier methods made trainable,
and train the head. A tuner is then one options dataclass, one config builder and one parameter formula
(``TUNERS``); the ``matched_*`` helpers search the tuner's size option for the count closest to LoRA-C's at a given
rank on the same convs (ties: the smaller option).

Conv2d support in the installed peft (0.21.2), per tuner; D = Cin * k * k, the flattened kernel length:

* ``peft_lora`` -- LoRA, kernel-wise: lora_A = Conv2d(Cin, r, k), lora_B = Conv2d(r, Cout, 1);
  r * (D + Cout) per conv. Mergeable.
* ``peft_dora`` -- ``LoraConfig(use_dora=True)``: LoRA's direction update plus a magnitude per output channel
  (initialised to ||W||, so the output at init equals the base up to float rounding); r * (D + Cout) + Cout.
  Mergeable.
* ``peft_loha`` -- LoHa (LyCORIS): dW = (W1a W1b) * (W2a W2b) (Hadamard product) on W viewed as (Cout, D);
  2 r (D + Cout) per conv (``use_effective_conv2d`` off, peft's default). One factor starts at 0: exact at init.
  Mergeable.
* ``peft_lokr`` -- LoKr (LyCORIS): dW = W1 kron W2, Cout = a*b and Cin = c*d split by peft's ``factorization``
  (``decompose_factor`` -1: the divisor pair nearest the square root; f > 0 dividing the width: (f, width / f));
  W1 (a, c) is full and zero at init (exact at init), W2 is full (b, d, k, k) when r >= max(b, d) / 2, otherwise
  W2a (b, r) @ W2b (r, d*k*k). The count is piecewise in r and, at the default factor -1, saturates far below
  LoRA-C's budget (ResNet-50: at most 99,008 whatever the rank, LoRA-C r=1 has 109,440), so
  ``matched_lokr_options`` searches ``decompose_factor`` and ``rank`` together. Mergeable.
* ``peft_oft`` -- OFT: a block-diagonal orthogonal matrix R (Cayley transform of skew-symmetric blocks of size b)
  rotates the flattened input patches (equivalently W @ R); (D / b) * b (b - 1) / 2 = D (b - 1) / 2 per conv.
  b must divide every target's D (peft would otherwise silently change b per layer, so petl refuses it).
  R = I at init (output equal up to float rounding). Mergeable. **1 x 1 convs only**: peft 0.21.2's unmerged
  OFT forward on a k x k conv (k > 1) unfolds the input without padding, rotates the patches and folds them back
  with ``F.fold``, which sums overlapping patches: at init (R = I) a 3 x 3 conv's output is off by ~300 %
  (relative norm, 16 -> 8 channels on 8 x 8) while the merged W @ R is right, and maps smaller than the kernel
  crash. So petl's default OFT targets are LoRA-C's 1 x 1 targets (ResNet-50: 36 of 52; Lite0: all 32) and a
  k x k target is refused; ``matched_oft_block_size`` still matches LoRA-C's budget on all of its targets.
* ``peft_boft`` -- BOFT (butterfly OFT) with ``boft_n_butterfly_factor = 1``: full b x b blocks (made orthogonal by
  a Cayley transform of their skew part) plus a per-output-channel scale: D * b + Cout per conv. peft raises the
  butterfly factor above 1 only with its ``fbd_cuda`` extension; without it (CPU, or no ninja) peft silently sets
  it to 1, so petl fixes it at 1 for a count that does not depend on the machine. peft materialises two dense
  D x D matrices per conv on every forward (O(D^3) work; ResNet-50's 52 targets hold 482 MB of such buffers and
  need ~1.6 TFLOP per forward), so BOFT is practical on Lite0-size convs or a GPU only. Mergeable.

Every tuner in peft 0.21.2 that the issue names supports ``nn.Conv2d``; none supports grouped convs through
this path (LoRA / DoRA need the rank divisible by the groups, BOFT raises, OFT / LoHa / LoKr build the update over
Cin / groups but the default targets leave grouped convs out anyway, so all tuners adapt exactly LoRA-C's
convs). peft's ``adalora`` / ``vera`` / ``fourierft`` and the others are not wired in here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from peft import BOFTConfig, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig, get_peft_model
from peft.tuners.boft import layer as peft_boft_layer
from peft.tuners.loha import layer as peft_loha_layer
from peft.tuners.lokr import layer as peft_lokr_layer
from peft.tuners.lora import layer as peft_lora_layer
from peft.tuners.oft import layer as peft_oft_layer
from torch import nn

from ..errors import PetlConfigError
from ..registry import option, register_method
from ..state import head_module, set_trainable
from ._targets import resolve_conv_targets
from .lora_c import lora_c_parameters, validate_lora_options

# per unit of rank on ResNet-50's 52 default targets: sum of Cin*k*k + Cout (peft), of k*k*(Cin + Cout) (LoRA-C)
PEFT_PARAMS_PER_RANK_RESNET50 = 79_232
LORA_C_PARAMS_PER_RANK_RESNET50 = 109_440


def _flat_in(conv: nn.Conv2d) -> int:
    """D = Cin * kh * kw: the length of one output channel's flattened kernel (groups = 1)."""
    kh, kw = conv.kernel_size
    return conv.in_channels * kh * kw


# ---------------------------------------------------------------------------------------------- options


@dataclass
class PeftLoraOptions:
    """rank r, alpha (scale alpha/r), dropout before lora_A, fnmatch targets.

    targets None = LoRA-C's default convs (which leave grouped / depth-wise convs out: peft cannot adapt them),
    so both methods adapt exactly the same layers.
    """

    rank: int = option(4, "rank r of each conv's kernel-wise update lora_B(lora_A(x))")
    alpha: float = option(8.0, "scale: the update is multiplied by alpha / rank")
    dropout: float = option(0.0, "dropout on the low-rank path's input (0: none)")
    targets: tuple[str, ...] | None = option(None, "fnmatch patterns of the convs to adapt (None: LoRA-C's default convs, grouped / depth-wise convs left out)")

    method: ClassVar[str] = "peft_lora"    # the name error messages use

    def __post_init__(self) -> None:
        validate_lora_options(self.method, self.rank, self.alpha, self.dropout, self.targets)


@dataclass
class PeftDoraOptions(PeftLoraOptions):
    """DoRA: LoRA's rank / alpha / dropout / targets, plus a trained magnitude per output channel."""

    method: ClassVar[str] = "peft_dora"


@dataclass
class PeftLycorisOptions:
    """rank r and alpha (scale alpha / r) of the LyCORIS factors, fnmatch targets (None = LoRA-C's convs)."""

    rank: int = option(4, "rank r of the LyCORIS factors")
    alpha: float = option(8.0, "scale: the update is multiplied by alpha / rank")
    targets: tuple[str, ...] | None = option(None, "fnmatch patterns of the convs to adapt (None: LoRA-C's default convs)")

    method: ClassVar[str] = "peft_lycoris"

    def __post_init__(self) -> None:
        validate_lora_options(self.method, self.rank, self.alpha, 0.0, self.targets)


@dataclass
class PeftLohaOptions(PeftLycorisOptions):
    """LoHa: rank r and alpha of the two Hadamard-multiplied low-rank pairs, fnmatch targets."""

    method: ClassVar[str] = "peft_loha"


@dataclass
class PeftLokrOptions(PeftLycorisOptions):
    """LoKr: rank r (of W2's factors, until W2 is full), alpha, fnmatch targets, ``decompose_factor`` (-1 = split
    each width near its square root; f > 0 = W1 is f x f where f divides the width)."""

    decompose_factor: int = option(-1, "-1: split each width near its square root; f > 0: W1 is f x f (f divides the width)")
    method: ClassVar[str] = "peft_lokr"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.decompose_factor, int) or not (self.decompose_factor == -1
                                                               or self.decompose_factor >= 1):
            raise PetlConfigError(f"peft_lokr.decompose_factor must be -1 or an integer >= 1, "
                                  f"got {self.decompose_factor!r}")


@dataclass
class PeftOftOptions:
    """block_size b of the orthogonal blocks (must divide every target's Cin*k*k), fnmatch targets."""

    block_size: int = option(8, "size b of the orthogonal blocks (must divide every target's Cin*k*k)")
    targets: tuple[str, ...] | None = option(None, "fnmatch patterns of the convs to adapt (None: LoRA-C's default convs; OFT: their 1 x 1 convs)")

    method: ClassVar[str] = "peft_oft"

    def __post_init__(self) -> None:
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size < 2:
            raise PetlConfigError(f"{self.method}.block_size must be an integer >= 2, got {self.block_size!r}")
        validate_lora_options(self.method, 1, 1.0, 0.0, self.targets)


@dataclass
class PeftBoftOptions(PeftOftOptions):
    """block_size b of the butterfly blocks (butterfly factor 1; must divide every Cin*k*k), fnmatch targets."""

    block_size: int = option(4, "size b of the butterfly blocks (must divide every target's Cin*k*k)")
    method: ClassVar[str] = "peft_boft"


# ---------------------------------------------------------------------------------- per-conv parameter counts


def peft_parameters(conv: nn.Conv2d, rank: int) -> int:
    """peft LoRA parameters of one (groups=1) conv: r * (Cin*k*k + Cout)."""
    return rank * (_flat_in(conv) + conv.out_channels)


def dora_parameters(conv: nn.Conv2d, rank: int) -> int:
    """DoRA: LoRA's r * (D + Cout) plus the magnitude vector (Cout)."""
    return peft_parameters(conv, rank) + conv.out_channels


def loha_parameters(conv: nn.Conv2d, rank: int) -> int:
    """LoHa: two (Cout x r) @ (r x D) pairs, 2 r (D + Cout)."""
    return 2 * rank * (_flat_in(conv) + conv.out_channels)


@functools.lru_cache(maxsize=None)
def factor_pair(n: int, factor: int = -1) -> tuple[int, int]:
    """The split (m, n / m), m <= n / m, that peft's ``factorization(n, factor)`` returns: (factor, n / factor) when
    factor divides n, else m = the largest divisor of n not above sqrt(n) and not above ``factor`` (if > 0)."""
    if factor > 0 and n % factor == 0:
        return factor, n // factor
    cap = factor if factor > 0 else n
    m = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0 and d <= cap)
    return m, n // m


def lokr_parameters(conv: nn.Conv2d, rank: int, decompose_factor: int = -1) -> int:
    """LoKr: full W1 (a x c) plus W2 full (b*d*k*k) when r >= max(b, d)/2, else r (b + d k k)."""
    a, b = factor_pair(conv.out_channels, decompose_factor)
    c, d = factor_pair(conv.in_channels, decompose_factor)
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    w2 = b * d * kk if rank >= max(b, d) / 2 else rank * (b + d * kk)
    return a * c + w2


def oft_parameters(conv: nn.Conv2d, block_size: int) -> int:
    """OFT: D / b skew-symmetric b x b blocks stored as b (b - 1) / 2 values each: D (b - 1) / 2."""
    return _flat_in(conv) // block_size * (block_size * (block_size - 1) // 2)


def boft_parameters(conv: nn.Conv2d, block_size: int) -> int:
    """BOFT, butterfly factor 1: D / b full b x b blocks plus a scale per output channel: D b + Cout."""
    return _flat_in(conv) * block_size + conv.out_channels


# ---------------------------------------------------------------------------------------------- the tuners


@dataclass(frozen=True)
class PeftTuner:
    """How petl drives one peft tuner: its Conv2d layer class, config, size option and parameter formula."""

    layer: type
    config: Callable[[Any, list[str]], Any]
    size_option: str                               # "rank" or "block_size"
    parameters: Callable[[nn.Conv2d, int], int]    # per conv, at a value of size_option
    pointwise_only: bool = False                   # adapts 1 x 1 convs only (peft_oft, see module docstring)


def _lora_config(o: PeftLoraOptions, names: list[str]) -> LoraConfig:
    return LoraConfig(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=names, bias="none")


def _dora_config(o: PeftDoraOptions, names: list[str]) -> LoraConfig:
    return LoraConfig(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=names, bias="none",
                      use_dora=True)


def _loha_config(o: PeftLohaOptions, names: list[str]) -> LoHaConfig:
    return LoHaConfig(r=o.rank, alpha=o.alpha, target_modules=names, use_effective_conv2d=False)


def _lokr_config(o: PeftLokrOptions, names: list[str]) -> LoKrConfig:
    return LoKrConfig(r=o.rank, alpha=o.alpha, target_modules=names, use_effective_conv2d=False,
                      decompose_both=False, decompose_factor=o.decompose_factor)


def _oft_config(o: PeftOftOptions, names: list[str]) -> OFTConfig:
    return OFTConfig(r=0, oft_block_size=o.block_size, target_modules=names, coft=False, block_share=False)


def _boft_config(o: PeftBoftOptions, names: list[str]) -> BOFTConfig:
    return BOFTConfig(boft_block_size=o.block_size, boft_block_num=0, boft_n_butterfly_factor=1,
                      target_modules=names)


TUNERS: dict[str, PeftTuner] = {
    "peft_lora": PeftTuner(peft_lora_layer.Conv2d, _lora_config, "rank", peft_parameters),
    "peft_dora": PeftTuner(peft_lora_layer.Conv2d, _dora_config, "rank", dora_parameters),
    "peft_loha": PeftTuner(peft_loha_layer.Conv2d, _loha_config, "rank", loha_parameters),
    "peft_lokr": PeftTuner(peft_lokr_layer.Conv2d, _lokr_config, "rank", lokr_parameters),
    "peft_oft": PeftTuner(peft_oft_layer.Conv2d, _oft_config, "block_size", oft_parameters, pointwise_only=True),
    "peft_boft": PeftTuner(peft_boft_layer.Conv2d, _boft_config, "block_size", boft_parameters),
}


def _check_block_size(method: str, convs: Sequence[tuple[str, nn.Conv2d]], block_size: int) -> None:
    bad = [(n, _flat_in(c)) for n, c in convs if _flat_in(c) % block_size]
    if bad:
        valid = block_sizes(c for _, c in convs)
        raise PetlConfigError(f"{method}.block_size={block_size} does not divide Cin*k*k={bad[0][1]} of {bad[0][0]} "
                              f"({len(bad)} target(s)); block sizes dividing every target: "
                              f"{', '.join(map(str, valid)) or 'none'}")


def _pointwise(conv: nn.Conv2d) -> bool:
    return tuple(conv.kernel_size) == (1, 1)


def tuner_targets(model: nn.Module, method: str, targets: Sequence[str] | None) -> list[str]:
    """The convs ``method`` adapts: LoRA-C's (default or ``targets``), 1 x 1 ones only for a pointwise-only tuner."""
    names = resolve_conv_targets(model, targets)
    if not TUNERS[method].pointwise_only:
        return names
    if targets is None:
        names = [n for n in names if _pointwise(model.get_submodule(n))]
        if not names:
            raise PetlConfigError(f"{method} adapts 1 x 1 convs only and this model's default targets have none")
        return names
    wide = [n for n in names if not _pointwise(model.get_submodule(n))]
    if wide:
        raise PetlConfigError(f"{method} adapts 1 x 1 convs only (peft 0.21.2's unmerged OFT forward is wrong for "
                              f"k > 1); {len(wide)} target(s) are not 1 x 1 (e.g. {wide[0]}); pass targets that "
                              f"exclude them")
    return names


def inject_peft(model: nn.Module, method: str, options: Any) -> None:
    """The shared path: same convs as LoRA-C, peft wraps them in place, composition with earlier methods kept."""
    tuner = TUNERS[method]
    names = tuner_targets(model, method, options.targets)
    convs = [(n, model.get_submodule(n)) for n in names]
    grouped = [n for n, c in convs if c.groups > 1]
    if grouped:
        raise PetlConfigError(f"{method}: peft's conv tuners need groups=1 (rank / blocks over Cin*k*k of a dense "
                              f"kernel); {len(grouped)} target(s) are grouped (e.g. {grouped[0]}); pass targets that "
                              f"exclude them")
    if tuner.size_option == "block_size":
        _check_block_size(method, convs, options.block_size)
    trainable_before = [p for p in model.parameters() if p.requires_grad]
    get_peft_model(model, tuner.config(options, list(names)))   # mutates ``model`` in place; wrapper dropped
    injected = [n for n, m in model.named_modules() if isinstance(m, tuner.layer)]
    if len(injected) != len(names):
        raise PetlConfigError(f"peft injected {len(injected)} {tuner.layer.__module__}.Conv2d layers for "
                              f"{len(names)} targets")
    for p in trainable_before:        # peft froze everything but its own layers: restore composition
        p.requires_grad_(True)
    set_trainable(head_module(model))


@register_method("peft_lora", PeftLoraOptions)
def peft_lora(model: nn.Module, options: PeftLoraOptions) -> None:
    """LoRA (peft): HF peft's kernel-wise Conv2d LoRA on the same convs as LoRA-C (the matched baseline)."""
    inject_peft(model, "peft_lora", options)


@register_method("peft_dora", PeftDoraOptions)
def peft_dora(model: nn.Module, options: PeftDoraOptions) -> None:
    """DoRA (peft, LoRA with use_dora): magnitude + low-rank direction update on LoRA-C's convs."""
    inject_peft(model, "peft_dora", options)


@register_method("peft_loha", PeftLohaOptions)
def peft_loha(model: nn.Module, options: PeftLohaOptions) -> None:
    """LoHa (peft): Hadamard product of two low-rank updates on LoRA-C's convs."""
    inject_peft(model, "peft_loha", options)


@register_method("peft_lokr", PeftLokrOptions)
def peft_lokr(model: nn.Module, options: PeftLokrOptions) -> None:
    """LoKr (peft): Kronecker product of a small full and a low-rank factor on LoRA-C's convs."""
    inject_peft(model, "peft_lokr", options)


@register_method("peft_oft", PeftOftOptions)
def peft_oft(model: nn.Module, options: PeftOftOptions) -> None:
    """OFT (peft): block-diagonal orthogonal rotation of each conv's input patches on LoRA-C's 1 x 1 convs."""
    inject_peft(model, "peft_oft", options)


@register_method("peft_boft", PeftBoftOptions)
def peft_boft(model: nn.Module, options: PeftBoftOptions) -> None:
    """BOFT (peft, butterfly factor 1): orthogonal blocks plus an output scale on LoRA-C's convs."""
    inject_peft(model, "peft_boft", options)


# ------------------------------------------------------------------------------------------ matched budgets


def _convs(model_or_targets: nn.Module | Sequence[nn.Conv2d], targets: Sequence[str] | None) -> list[nn.Conv2d]:
    if isinstance(model_or_targets, nn.Module):
        return [model_or_targets.get_submodule(n) for n in resolve_conv_targets(model_or_targets, targets)]
    convs = list(model_or_targets)
    if not convs or not all(isinstance(c, nn.Conv2d) for c in convs):
        raise PetlConfigError("matched_* helpers take a model or a non-empty sequence of nn.Conv2d layers")
    return convs


def block_sizes(convs: Iterable[nn.Conv2d]) -> list[int]:
    """Block sizes >= 2 that divide every conv's Cin*k*k (the only ones OFT / BOFT take without re-sizing)."""
    g = math.gcd(*(_flat_in(c) for c in convs))
    return [b for b in range(2, g + 1) if g % b == 0]


def tuner_parameters(method: str, convs: Sequence[nn.Conv2d], value: int) -> int:
    """The tuner's adapter parameters on ``convs`` at ``value`` of its size option (rank or block size)."""
    return sum(TUNERS[method].parameters(c, value) for c in convs)


def matched_option(method: str, model_or_targets: nn.Module | Sequence[nn.Conv2d], lora_c_rank: int,
                   targets: Sequence[str] | None = None, max_rank: int = 512) -> int:
    """The value of ``method``'s size option whose count is closest to LoRA-C's at ``lora_c_rank`` (ties: smaller).

    Searched, not solved, because LoKr's count is piecewise in the rank and OFT / BOFT take only block sizes that
    divide every target's Cin*k*k.
    """
    if method not in TUNERS:
        raise PetlConfigError(f"matched_option knows {', '.join(TUNERS)}, not {method!r}")
    if method == "peft_lokr":
        raise PetlConfigError("LoKr's rank alone cannot reach LoRA-C's budget; use matched_options('peft_lokr', ...) "
                              "or matched_lokr_options, which also choose decompose_factor")
    if not isinstance(lora_c_rank, int) or lora_c_rank < 1:
        raise PetlConfigError(f"lora_c_rank must be an integer >= 1, got {lora_c_rank!r}")
    convs = _convs(model_or_targets, targets)
    budget = sum(lora_c_parameters(c, lora_c_rank) for c in convs)
    if TUNERS[method].pointwise_only:      # LoRA-C's budget on all its convs, spent on the 1 x 1 ones
        convs = [c for c in convs if _pointwise(c)]
        if not convs:
            raise PetlConfigError(f"{method} adapts 1 x 1 convs only and none of these convs is 1 x 1")
    if TUNERS[method].size_option == "rank":
        candidates = list(range(1, max_rank + 1))
    else:
        candidates = block_sizes(convs)
        if not candidates:
            raise PetlConfigError(f"{method}: no block size >= 2 divides every target's Cin*k*k")
    return min(candidates, key=lambda v: (abs(tuner_parameters(method, convs, v) - budget), v))


def matched_peft_rank(model_or_targets: nn.Module | Sequence[nn.Conv2d], lora_c_rank: int,
                      targets: Sequence[str] | None = None) -> int:
    """The peft LoRA rank whose parameter count is closest to LoRA-C's at ``lora_c_rank`` on the same convs.

    On ResNet-50 (52 default convs) LoRA-C costs 109,440 parameters per rank and peft 79,232, so LoRA-C rank
    1 / 2 / 4 / 8 / 16 matches peft rank 1 / 3 / 6 / 11 / 22 (ties: lower rank).
    """
    return matched_option("peft_lora", model_or_targets, lora_c_rank, targets)


def matched_dora_rank(model_or_targets: nn.Module | Sequence[nn.Conv2d], lora_c_rank: int,
                      targets: Sequence[str] | None = None) -> int:
    """DoRA rank at LoRA-C's budget (LoRA's count plus the Cout magnitudes)."""
    return matched_option("peft_dora", model_or_targets, lora_c_rank, targets)


def matched_loha_rank(model_or_targets: nn.Module | Sequence[nn.Conv2d], lora_c_rank: int,
                      targets: Sequence[str] | None = None) -> int:
    """LoHa rank at LoRA-C's budget (twice LoRA's count per rank)."""
    return matched_option("peft_loha", model_or_targets, lora_c_rank, targets)


LOKR_FACTORS = (-1, 2, 4, 8, 16, 32, 64)


def matched_lokr_options(model_or_targets: nn.Module | Sequence[nn.Conv2d], lora_c_rank: int,
                         targets: Sequence[str] | None = None, max_rank: int = 256) -> dict[str, int]:
    """LoKr's ``decompose_factor`` and ``rank`` at LoRA-C's budget (closest count; ties: larger factor, then the
    smaller rank). Searched over ``LOKR_FACTORS`` x 1..max_rank: the rank alone cannot reach the budget."""
    if not isinstance(lora_c_rank, int) or lora_c_rank < 1:
        raise PetlConfigError(f"lora_c_rank must be an integer >= 1, got {lora_c_rank!r}")
    convs = _convs(model_or_targets, targets)
    budget = sum(lora_c_parameters(c, lora_c_rank) for c in convs)
    best = min(((f, r) for f in LOKR_FACTORS for r in range(1, max_rank + 1)),
               key=lambda fr: (abs(sum(lokr_parameters(c, fr[1], fr[0]) for c in convs) - budget),
                               -fr[0] if fr[0] > 0 else 0, fr[1]))
    return {"decompose_factor": best[0], "rank": best[1]}


def matched_oft_block_size(model_or_targets: nn.Module | Sequence[nn.Conv2d], lora_c_rank: int,
                           targets: Sequence[str] | None = None) -> int:
    """OFT block size at LoRA-C's budget, among the sizes dividing every target's Cin*k*k."""
    return matched_option("peft_oft", model_or_targets, lora_c_rank, targets)


def matched_boft_block_size(model_or_targets: nn.Module | Sequence[nn.Conv2d], lora_c_rank: int,
                            targets: Sequence[str] | None = None) -> int:
    """BOFT block size at LoRA-C's budget, among the sizes dividing every target's Cin*k*k."""
    return matched_option("peft_boft", model_or_targets, lora_c_rank, targets)


def matched_options(method: str, model_or_targets: nn.Module | Sequence[nn.Conv2d], lora_c_rank: int,
                    targets: Sequence[str] | None = None) -> dict[str, int]:
    """The options (as ``petl.apply`` keywords) that put ``method`` at LoRA-C's budget at ``lora_c_rank``."""
    if method == "peft_lokr":
        return matched_lokr_options(model_or_targets, lora_c_rank, targets)
    return {TUNERS[method].size_option if method in TUNERS else "rank":
            matched_option(method, model_or_targets, lora_c_rank, targets)}
