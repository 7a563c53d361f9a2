"""The plain trainer: what the engine steps with when no applied method brings its own.

The contract every trainer satisfies is :class:`petl.trainer.Trainer` (re-exported here); a method brings its own
through ``MethodSpec.trainer_factory`` (MetaLR does), which the engine calls as
``factory(model, options, lr=config.lr, val_batches=iterator, grad_scaler=scaler)``. Everything else gets
:class:`PlainTrainer` (an ordinary optimiser + the configured lr schedule), so the training loop has a single code
path.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from petl.trainer import LossFn, Trainer, TrainerFactory

from .schedule import Schedule

__all__ = ["LossFn", "PlainTrainer", "Trainer", "TrainerFactory", "build_optimizer"]


def build_optimizer(name: str, groups: list[dict[str, Any]], weight_decay: float,
                    momentum: float) -> torch.optim.Optimizer:
    """adamw / adam (L2 decay) / sgd (momentum); weight decay applies to every trainable tensor."""
    builders: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "adamw": lambda: torch.optim.AdamW(groups, weight_decay=weight_decay),
        "adam": lambda: torch.optim.Adam(groups, weight_decay=weight_decay),
        "sgd": lambda: torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay),
    }
    if name not in builders:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(builders)}")
    return builders[name]()


class PlainTrainer:
    """Optimiser step with per-epoch learning rates from :class:`Schedule` (head and body param groups).

    fp16 autocast uses the given ``GradScaler``; steps whose scaled gradients overflow are skipped by the scaler
    (its normal behaviour), while a non-finite *loss* is returned without any update.
    """

    def __init__(self, model: nn.Module, head_params: list[nn.Parameter], optimizer: str, schedule: Schedule,
                 weight_decay: float, momentum: float, grad_scaler: torch.amp.GradScaler | None = None) -> None:
        head_ids = {id(p) for p in head_params}
        trainable = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
        body = [p for p in trainable if id(p) not in head_ids]
        head = [p for p in trainable if id(p) in head_ids]
        self.roles = [r for r, ps in (("body", body), ("head", head)) if ps]
        groups = [{"params": ps, "lr": 0.0} for ps in (body, head) if ps]
        if not groups:
            raise ValueError("the model has no trainable parameters")
        self.model, self.schedule = model, schedule
        self.optimizer = build_optimizer(optimizer, groups, weight_decay, momentum)
        self.scaler = grad_scaler
        self.epoch = 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        lrs = self.schedule.lrs(epoch)
        for role, group in zip(self.roles, self.optimizer.param_groups):
            group["lr"] = lrs[role]

    def on_epoch_end(self, metric: float) -> None:
        """Feeds the validation select metric to a plateau schedule."""
        self.schedule.observe(metric)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> float:
        loss = loss_fn(self.model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None and self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return value

    def learning_rates(self) -> dict[str, float]:
        """This epoch's rates by role, body first (``log`` records them under ``"lrs"``)."""
        return {r: g["lr"] for r, g in zip(self.roles, self.optimizer.param_groups)}

    def log(self) -> dict[str, Any]:
        return {"lrs": self.learning_rates()}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
