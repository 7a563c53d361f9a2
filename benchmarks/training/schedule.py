"""Per-epoch learning rates for the body and head parameter groups.

Rates change once per epoch (not per iteration), so a run resumed from an epoch checkpoint reproduces them
exactly from the epoch index (plus the plateau state, which is checkpointed).

Epochs ``0 .. warmup_head_epochs-1`` train only the head at ``head_lr`` (or ``lr``); the body rate is 0 there.
After such a warm-up the whole network, head included, trains at ``lr`` with the schedule: that is the two-stage
recipe (head-only warm-up at 1e-3, *then the whole network* at a small lr with cosine), and a head kept at 1e-3
next to a body at 1e-5 is a different method. So with ``warmup_head_epochs > 0``, ``head_lr`` is the warm-up rate
only; with no warm-up it is the head's base rate for the whole run. (One field, ``RunConfig.head_lr``, cannot say
both; a separate head rate after a warm-up would need a new config field.)
The remaining epochs run the configured schedule from their own start: a linear warm-up over ``warmup_epochs``
(factor (k+1)/(warmup+1)), then ``cosine`` (towards ``min_lr``, reached one step after the last epoch, so every epoch trains), ``step`` (x ``step_gamma`` at each
absolute epoch in ``step_milestones``), ``plateau`` (x0.1 after ``PLATEAU_PATIENCE`` epochs without
improvement of the validation select metric, floor ``min_lr``) or ``constant``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

PLATEAU_FACTOR = 0.1
PLATEAU_PATIENCE = 3


@dataclass
class Schedule:
    kind: str
    lr: float
    head_lr: float
    epochs: int
    min_lr: float = 0.0
    warmup_epochs: int = 0
    warmup_head_epochs: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    maximize: bool = True           # plateau: direction of the observed metric
    plateau_scale: float = 1.0
    plateau_best: float | None = None
    plateau_bad: int = 0
    cosine_end: str = "after_last"  # "last_epoch": min_lr at the last epoch (records made before the fix)

    def __post_init__(self) -> None:
        factors: dict[str, Callable[[int, int], float]] = {
            "cosine": self._cosine, "step": self._step, "plateau": self._plateau, "constant": lambda k, e: 1.0}
        if self.kind not in factors:
            raise ValueError(f"unknown schedule {self.kind!r}; choose one of {', '.join(factors)}")
        if self.cosine_end not in ("after_last", "last_epoch"):
            raise ValueError(f"unknown cosine_end {self.cosine_end!r}; choose after_last or last_epoch")
        self._factor = factors[self.kind]

    def lrs(self, epoch: int) -> dict[str, float]:
        """``{"body": lr, "head": lr}`` for ``epoch`` (0-based); see the module docstring for ``head_lr``."""
        if epoch < self.warmup_head_epochs:
            return {"body": 0.0, "head": self.head_lr}
        k = epoch - self.warmup_head_epochs
        warm = (k + 1) / (self.warmup_epochs + 1) if k < self.warmup_epochs else 1.0
        head_base = self.lr if self.warmup_head_epochs > 0 else self.head_lr
        return {role: self._apply(base, k, epoch) * warm for role, base in (("body", self.lr), ("head", head_base))}

    def _apply(self, base: float, k: int, epoch: int) -> float:
        if self.kind == "cosine":
            return self.min_lr + (base - self.min_lr) * self._cosine(k, epoch)
        return max(base * self._factor(k, epoch), min(self.min_lr, base))

    def _cosine(self, k: int, epoch: int) -> float:
        """Half a cosine over the schedule's ``span`` epochs that ends *after* the last one (t = k / span), so
        the last epoch still trains (at a small rate) instead of at ``min_lr`` exactly; annealing to ``min_lr`` at
        the last epoch (t = k / (span - 1)) trained an N-epoch run for N-1 epochs, at 0 when ``min_lr`` is 0."""
        span = self.epochs - self.warmup_head_epochs - self.warmup_epochs
        if self.cosine_end == "last_epoch":
            t = 0.0 if k < self.warmup_epochs or span <= 1 else (k - self.warmup_epochs) / (span - 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        t = 0.0 if k < self.warmup_epochs or span <= 0 else (k - self.warmup_epochs) / span
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    def _step(self, k: int, epoch: int) -> float:
        return self.gamma ** sum(1 for m in self.milestones if epoch >= m)

    def _plateau(self, k: int, epoch: int) -> float:
        return self.plateau_scale

    def observe(self, metric: float) -> None:
        """End-of-epoch validation metric; only the plateau schedule uses it."""
        if self.kind != "plateau" or not math.isfinite(metric):
            return
        better = self.plateau_best is None or (metric > self.plateau_best if self.maximize else metric < self.plateau_best)
        if better:
            self.plateau_best, self.plateau_bad = metric, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad >= PLATEAU_PATIENCE:
                self.plateau_scale *= PLATEAU_FACTOR
                self.plateau_bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "plateau_best": self.plateau_best, "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = None if state["plateau_best"] is None else float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])
