"""What the training loop carries from epoch to epoch, and how it goes into and out of an epoch checkpoint.

:class:`TrainState` is the loop's bookkeeping (the kept best state, its metric and epoch, the early-stopping
patience, the history, the whole-run totals of earlier processes). The checkpoint adds what the loop's parts own
themselves (the model's trained state, the trainer's, the validation cycle's position, the RNG state), so that
a resumed run continues bit-exactly where the killed one checkpointed.

Checkpoint layouts: format 2 (this one) writes a ``"format"`` key; format 1 is everything written before it, with
the same fields (the oldest of those lack ``"totals"``: the record then measures from the resumed epoch). Both
resume; a checkpoint of a newer format than this code knows is refused, not half-read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from petl.errors import RecordError

CHECKPOINT_FORMAT = 2


@dataclass
class TrainState:
    """The loop's state after the last epoch trained to its end (``epoch`` -1: none yet)."""

    best_state: dict[str, torch.Tensor]
    best_metric: float = -math.inf
    best_epoch: int = -1
    patience: int = 0
    epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] | None = None
    """Whole-run totals (wall time, training images and seconds, peak memory, segments) of the processes before
    this one, read from the checkpoint it resumed; None for a fresh run."""
    carried: bool = True
    """False when resumed from a checkpoint written before totals were carried (then: this process only)."""

    def observe(self, epoch: int, score: float, snapshot: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Epoch ``epoch`` ended with validation ``score`` (higher is better): keep it if it is the best so far
        (the first epoch always is), else count one more epoch of patience."""
        if score > self.best_metric or self.best_epoch < 0:
            self.best_state, self.best_metric, self.best_epoch, self.patience = snapshot(), score, epoch, 0
        else:
            self.patience += 1
        self.epoch = epoch

    def stopped_early(self, patience_limit: int) -> bool:
        """Whether early stopping (``patience_limit`` > 0 epochs without improvement) has ended training."""
        return patience_limit > 0 and self.patience >= patience_limit

    def to_checkpoint(self, *, model_state: dict[str, torch.Tensor], trainer: dict[str, Any],
                      val_cycle: dict[str, Any], rng: dict[str, Any], totals: dict[str, Any]) -> dict[str, Any]:
        """The epoch checkpoint: this state plus the parts' own states and the whole-run ``totals`` so far."""
        return {"format": CHECKPOINT_FORMAT, "epoch": self.epoch, "state": model_state, "trainer": trainer,
                "val_cycle": val_cycle, "rng": rng, "best_state": self.best_state, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "patience": self.patience, "history": self.history,
                "totals": totals}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        """The state a checkpoint of format 1 or 2 holds (its parts' states stay in ``ckpt`` for their owners)."""
        fmt = int(ckpt.get("format", 1))
        if fmt > CHECKPOINT_FORMAT:
            raise RecordError(f"epoch checkpoint format {fmt} is newer than this version reads "
                              f"({CHECKPOINT_FORMAT}); resume with the version that wrote it, or delete the run's "
                              f"work folder to restart it")
        return cls(best_state=ckpt["best_state"], best_metric=float(ckpt["best_metric"]),
                   best_epoch=int(ckpt["best_epoch"]), patience=int(ckpt["patience"]), epoch=int(ckpt["epoch"]),
                   history=list(ckpt["history"]), totals=ckpt.get("totals"), carried="totals" in ckpt)
