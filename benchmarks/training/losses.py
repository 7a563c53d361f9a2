"""Training criteria. Multiclass: ce / weighted_ce (inverse class frequency) / focal. Multilabel: BCE with logits,
weighted_ce -> per-label pos_weight (negatives / positives), focal -> sigmoid focal loss."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights N / (C * count_c), so a balanced set gets all ones (absent classes: weight 0)."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes).double()
    w = torch.where(counts > 0, labels.numel() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    return w.float()


def make_criterion(kind: str, task: str, train_labels: torch.Tensor, num_classes: int, gamma: float = 2.0,
                   device: torch.device | str = "cpu") -> LossFn:
    """The loss for ``kind`` ("ce", "weighted_ce", "focal") and ``task`` ("multiclass", "multilabel")."""
    if task == "multilabel":
        y = train_labels.float()
        pos = y.sum(0)
        pos_weight = ((y.shape[0] - pos) / pos.clamp_min(1)).to(device)
        builders: dict[str, LossFn] = {
            "ce": lambda z, t: F.binary_cross_entropy_with_logits(z.float(), t.float()),
            "weighted_ce": lambda z, t: F.binary_cross_entropy_with_logits(z.float(), t.float(), pos_weight=pos_weight),
            "focal": lambda z, t: _sigmoid_focal(z.float(), t.float(), gamma),
        }
    else:
        weights = class_weights(train_labels, num_classes).to(device)
        builders = {
            "ce": lambda z, t: F.cross_entropy(z.float(), t.reshape(-1).long()),
            "weighted_ce": lambda z, t: F.cross_entropy(z.float(), t.reshape(-1).long(), weight=weights),
            "focal": lambda z, t: _softmax_focal(z.float(), t.reshape(-1).long(), gamma),
        }
    if kind not in builders:
        raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(builders)}")
    return builders[kind]


def _softmax_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    logp = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    return (-(1 - logp.exp()).pow(gamma) * logp).mean()


def _sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    return ((1 - p_t).pow(gamma) * ce).mean()
