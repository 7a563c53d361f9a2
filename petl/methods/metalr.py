"""MetaLR (arXiv 2206.01408): meta-learned per-layer-group learning rates, with the official code's bugs fixed.

``apply`` only decides what trains (full fine-tuning when MetaLR is the only method, otherwise the trainable set
of the methods applied before it); the learning itself is :class:`MetaLRTrainer`, which the training engine
obtains through ``MethodSpec.trainer_factory`` and drives like any other :class:`~petl.trainer.Trainer`.

One iteration on a training batch (x, y) and the next validation batch (xv, yv):
1. g = grad L_train(theta) from the ordinary forward pass (BatchNorm running statistics update once, here).
2. Look-ahead theta'(alpha) = theta - alpha_group * g — a *descent* step (the official code adds the gradient).
   It is evaluated with ``torch.func.functional_call`` (no model copy). theta' is linear in alpha, so
   dL_val(theta')/d alpha_j = -<grad L_val(theta'), g_j> needs no second-order terms: g is used detached, which
   gives the same meta-gradient as ``create_graph=True`` (checked in tests/test_metalr.py) at lower cost.
3. g_alpha = dL_val(theta'(alpha))/d alpha on a batch of the real validation split (the engine cycles through
   it); alpha_j <- clamp(alpha_j * (1 - hyper_lr * u_j), min_rate, max_rate), where u_j depends on ``normalize``:

   * ``"none"``: u_j = g_alpha_j — the official rule. The raw meta-gradient scales with squared gradient norms
     (measured on ResNet-18 / BreastMNIST: -170 .. 7), so hyper_lr * g_alpha is far beyond 1 and every rate hits
     a clamp bound within two steps.
   * ``"max"``: u_j = g_alpha_j / max_k |g_alpha_k| (the previous default). It bounds the change by hyper_lr, but
     the group with the largest meta-gradient (the stem, measured) takes all of it: the other groups moved
     0.1 - 3 % as much, so in practice only one rate was meta-learned. (Unlike the previous default, a group
     whose rate is being reset no longer enters the max.)
   * ``"group"`` (default): u_j = clip(g_alpha_j / rms_j, -1, 1), where rms_j is the running root-mean-square of
     group j's *own* meta-gradient (an EMA with decay ``rms_decay``, bias-corrected like Adam's second moment).
     Every group's rate then moves on the scale of its own signal, and no rate changes by more than hyper_lr
     (10 %) per step. The first update of a group is +-hyper_lr (its RMS equals |g_alpha|), as Adam's first step.

   "max" and "group" are additions to the paper (a deviation from its update rule, made because the official
   rule saturates at the clamp bounds). During the first ``head_reset_epochs`` epochs the head's rate is reset
   to lr after each update (official); while it is, the head's meta-gradient is left out of everything that
   affects other groups (the max of ``"max"``) and of its own RMS, which starts when its rate starts to move.
   The head still takes part in the look-ahead, since the real step updates it.
4. The real step: Adam (L2 weight decay, as the official code) with the per-group rates, reusing g from step 1
   (the parameters have not changed, so it equals recomputing it as the official code does).

The rates, the RMS state and Adam's state are all in ``state_dict``, so a resumed run continues exactly.

BatchNorm during the look-ahead / validation forward: the model's current running statistics are passed as
*clones*, so layers in training mode normalise with batch statistics (as the official meta model does) and
layers held frozen use the running statistics, while the model's own buffers are not updated a second time.
Loss regularisers passed in ``loss_fn`` see the model's current parameters, not theta'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call

from ..batchnorm import set_bn_policy
from ..errors import PetlConfigError
from ..registry import option, register_method
from ..state import get_state, head_name, set_trainable

NORMALIZE = ("group", "max", "none")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MetaLROptions:
    """Meta-learning-rate hyper-parameters (official defaults; ``normalize`` documented in the module)."""

    hyper_lr: float = option(
        0.1,
        'meta step size: a rate changes by at most this fraction per step (normalize=group)')
    min_rate: float = option(1e-6, 'lower clamp of every learned rate')
    max_rate: float = option(1e-2, 'upper clamp of every learned rate')
    backbone_factor: float = option(
        0.1,
        "initial backbone rates = backbone_factor x the run's lr (the head starts at lr)")
    head_reset_epochs: int = option(
        5,
        "epochs during which the head's rate is reset to lr after each update (official)")
    weight_decay: float = option(1e-4, 'L2 weight decay of the Adam step (official)')
    normalize: str = option(
        "group",
        'meta-gradient scaling: group (per-group running RMS, default), max (global max), none (the official '
        'rule, saturates at the clamps)')
    rms_decay: float = option(0.99, "EMA decay of each group's meta-gradient RMS (normalize=group only)")

    def __post_init__(self) -> None:
        if not (0 < self.min_rate <= self.max_rate):
            raise PetlConfigError(f"metalr needs 0 < min_rate <= max_rate, got {self.min_rate}, {self.max_rate}")
        if self.hyper_lr <= 0 or self.backbone_factor <= 0 or self.weight_decay < 0 or self.head_reset_epochs < 0:
            raise PetlConfigError("metalr: hyper_lr and backbone_factor must be > 0, weight_decay and "
                                  "head_reset_epochs >= 0")
        if not 0.0 <= self.rms_decay < 1.0:
            raise PetlConfigError(f"metalr.rms_decay must be in [0, 1), got {self.rms_decay}")
        if self.normalize not in NORMALIZE:
            raise PetlConfigError(f"metalr.normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}")


# --- layer groups -----------------------------------------------------------------------------------------

def _block_prefixes(model: nn.Module) -> list[str] | None:
    """Module prefixes of the residual / inverted-residual blocks, in forward order; None if not recognised."""
    modules = dict(model.named_modules())
    stages = [f"layer{i}" for i in range(1, 5) if f"layer{i}" in modules]
    if stages:                                             # torchvision / timm ResNets: one group per block
        return [f"{s}.{n}" for s in stages for n, _ in modules[s].named_children()]
    if "blocks" in modules:                                # timm EfficientNet / MobileNet: blocks.S.I
        out = []
        for s, stage in modules["blocks"].named_children():
            children = list(stage.named_children())
            is_seq = isinstance(stage, nn.Sequential) and children
            out += [f"blocks.{s}.{i}" for i, _ in children] if is_seq else [f"blocks.{s}"]
        return out
    return None


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names per learning-rate group, in forward order: ``stem``, one group per block, ``neck``, ``head``.

    ResNets: stem (conv1, bn1), each residual block (16 on ResNet-50, 8 on ResNet-18), head. timm CNNs with
    ``blocks.S.I``: stem (conv_stem, bn1), each block, neck (conv_head, bn2 and anything after the blocks), head.
    Parameters a method inserted (LoRA factors, adapters) belong to the group of the module they live in.
    Other models: one group per top-level child module. Empty groups are omitted.
    """
    head = head_name(model)
    blocks = _block_prefixes(model)
    groups: dict[str, list[str]] = {}
    seen_block = False
    for name, _ in model.named_parameters():
        if name == head or name.startswith(head + "."):
            key = "head"
        elif blocks is not None:
            key = next((b for b in blocks if name.startswith(b + ".")), "")
            if key:
                seen_block = True
            else:
                key = "neck" if seen_block else "stem"
        else:
            key = name.split(".")[0]
        groups.setdefault(key, []).append(name)
    head_names = groups.pop("head", [])
    if head_names:
        groups["head"] = head_names
    return groups


# --- method -----------------------------------------------------------------------------------------------

class MetaLRTrainer:
    """Meta-learns one learning rate per layer group while training with Adam (see module docstring).

    Built by the engine as ``MetaLRTrainer(model, options, lr=..., val_batches=...)``; ``val_batches`` is an
    infinite iterator of ``(x, y)`` validation batches already on the model's device and transformed.
    """

    def __init__(self, model: nn.Module, options: MetaLROptions, *, lr: float,
                 val_batches: Iterator[tuple[torch.Tensor, torch.Tensor]], grad_scaler: Any = None,
                 **_: Any) -> None:
        if grad_scaler is not None and getattr(grad_scaler, "is_enabled", lambda: False)():
            raise PetlConfigError("metalr does not support fp16 loss scaling (its meta-gradient would be scaled); "
                                  "use bf16 autocast or fp32")
        self.model, self.options, self.lr, self.val_batches = model, options, float(lr), val_batches
        named = dict(model.named_parameters())
        self.group_names: list[str] = []
        self.group_params: list[list[tuple[str, nn.Parameter]]] = []
        for gname, pnames in layer_groups(model).items():
            params = [(n, named[n]) for n in pnames if named[n].requires_grad]
            if params:
                self.group_names.append(gname)
                self.group_params.append(params)
        if not self.group_params:
            raise PetlConfigError("metalr: the model has no trainable parameters")
        self.rates = [self.lr if g == "head" else options.backbone_factor * self.lr for g in self.group_names]
        self.rates = [min(max(r, options.min_rate), options.max_rate) for r in self.rates]
        self.optimizer = torch.optim.Adam([{"params": [p for _, p in ps], "lr": r}
                                           for ps, r in zip(self.group_params, self.rates)],
                                          weight_decay=options.weight_decay)
        self.epoch, self.steps = 0, 0
        self.last_meta_grad: list[float] = [0.0] * len(self.rates)
        # normalize="group": per-group EMA of the squared meta-gradient and its number of updates
        self.meta_sq: list[float] = [0.0] * len(self.rates)
        self.meta_count: list[int] = [0] * len(self.rates)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, metric: float) -> None:
        """Nothing: the rates are meta-learned per step, not scheduled on the validation metric."""

    def learning_rates(self) -> dict[str, float]:
        """The current per-group rates, stem first (the ones :meth:`log` records under ``"rates"``)."""
        return dict(zip(self.group_names, self.rates))

    def _resetting(self) -> set[int]:
        """Indices of the groups whose rate is reset this epoch (the head during ``head_reset_epochs``)."""
        if self.epoch < self.options.head_reset_epochs and "head" in self.group_names:
            return {self.group_names.index("head")}
        return set()

    def _head_reset(self) -> None:
        for gi in self._resetting():
            self.rates[gi] = min(max(self.lr, self.options.min_rate), self.options.max_rate)

    def normalized(self, g_alpha: list[float], active: list[int]) -> list[float]:
        """The factor u_j of the rate update for each active group (see the module docstring); updates the
        RMS state of ``normalize="group"``. Groups being reset get 0 and touch no state."""
        resetting = self._resetting()
        mode = self.options.normalize
        if mode == "none":
            return [0.0 if gi in resetting else g for g, gi in zip(g_alpha, active)]
        if mode == "max":
            scale = max([abs(g) for g, gi in zip(g_alpha, active) if gi not in resetting], default=0.0)
            return [0.0 if gi in resetting else g / max(scale, 1e-30) for g, gi in zip(g_alpha, active)]
        beta = self.options.rms_decay
        out = []
        for g, gi in zip(g_alpha, active):
            if gi in resetting:
                out.append(0.0)
                continue
            self.meta_sq[gi] = beta * self.meta_sq[gi] + (1.0 - beta) * g * g
            self.meta_count[gi] += 1
            rms = math.sqrt(self.meta_sq[gi] / (1.0 - beta ** self.meta_count[gi]))
            out.append(min(max(g / max(rms, 1e-30), -1.0), 1.0))
        return out

    def lookahead(self, grads: dict[str, torch.Tensor], alpha: torch.Tensor,
                  active: list[int]) -> dict[str, torch.Tensor]:
        """theta' = theta - alpha_g * grad for the active groups (a descent step; differentiable in alpha)."""
        out: dict[str, torch.Tensor] = {}
        for k, gi in enumerate(active):
            for name, p in self.group_params[gi]:
                if name in grads:
                    out[name] = p.detach() - alpha[k] * grads[name]
        return out

    def train_step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> float:
        """One MetaLR iteration; returns the training loss. A non-finite loss applies no update."""
        loss = loss_fn(self.model(x), y)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            return loss_value
        active = [gi for gi, ps in enumerate(self.group_params) if any(p.requires_grad for _, p in ps)]
        flat = [(n, p) for gi in active for n, p in self.group_params[gi] if p.requires_grad]
        grad_list = torch.autograd.grad(loss, [p for _, p in flat], allow_unused=True)
        grads = {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(flat, grad_list)}

        # (2) look-ahead and (3) meta-gradient on a validation batch
        xv, yv = next(self.val_batches)
        alpha = torch.tensor([self.rates[gi] for gi in active], dtype=torch.float32, device=x.device,
                             requires_grad=True)
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        new_params = self.lookahead(grads, alpha, active)
        val_loss = loss_fn(functional_call(self.model, {**buffers, **new_params}, (xv,)), yv)
        (g_alpha,) = torch.autograd.grad(val_loss, alpha)
        raw = [float(g) for g in g_alpha.detach().double()]
        if not all(math.isfinite(g) for g in raw):
            raise FloatingPointError(f"metalr: non-finite meta-gradient at step {self.steps}")
        for k, (gi, u) in enumerate(zip(active, self.normalized(raw, active))):
            new = self.rates[gi] * (1.0 - self.options.hyper_lr * u)
            self.rates[gi] = min(max(new, self.options.min_rate), self.options.max_rate)
            self.last_meta_grad[gi] = raw[k]
        self._head_reset()

        # (4) real step with the new rates, reusing the gradient of step 1
        for group, rate in zip(self.optimizer.param_groups, self.rates):
            group["lr"] = rate
        for n, p in flat:
            p.grad = grads[n].detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return loss_value

    def log(self) -> dict[str, Any]:
        """Per-group rates (for plots of the meta-learned schedule) and the step count."""
        return {"rates": self.learning_rates(), "steps": self.steps}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (plain containers: checkpoints load weights-only)."""
        return {"rates": list(self.rates), "groups": list(self.group_names), "epoch": self.epoch,
                "steps": self.steps, "optimizer": self.optimizer.state_dict(),
                "normalize": self.options.normalize, "meta_sq": list(self.meta_sq),
                "meta_count": list(self.meta_count), "last_meta_grad": list(self.last_meta_grad)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["groups"]) != self.group_names:
            raise PetlConfigError(f"metalr checkpoint groups {state['groups']} do not match the model's "
                                  f"{self.group_names}")
        saved = state.get("normalize")
        if saved is None and self.options.normalize == "group":
            raise PetlConfigError("metalr checkpoint was written before normalize='group' existed (it has no RMS "
                                  "state), so it cannot resume exactly; delete the run's work folder to restart "
                                  "it, or resume with metalr.normalize=max (the old default)")
        if saved is not None and saved != self.options.normalize:
            raise PetlConfigError(f"metalr checkpoint used normalize={saved!r}, this run normalize="
                                  f"{self.options.normalize!r}; resume with the same option or restart the run")
        self.rates = [float(r) for r in state["rates"]]
        self.epoch, self.steps = int(state["epoch"]), int(state["steps"])
        self.optimizer.load_state_dict(state["optimizer"])
        n = len(self.group_names)
        self.meta_sq = [float(v) for v in state.get("meta_sq", [0.0] * n)]
        self.meta_count = [int(v) for v in state.get("meta_count", [0] * n)]
        self.last_meta_grad = [float(v) for v in state.get("last_meta_grad", [0.0] * n)]


@register_method("metalr", MetaLROptions, trainer_factory=MetaLRTrainer)
def metalr(model: nn.Module, options: MetaLROptions) -> None:
    """MetaLR: meta-learned per-layer learning rates; full fine-tuning alone, or over earlier methods' parameters."""
    if not get_state(model).methods:   # alone: full fine-tuning, BatchNorm statistics train
        set_trainable(model)
        set_bn_policy(model, "train")
