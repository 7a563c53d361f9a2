"""The training-step contract between a method and whatever trains the model (the benchmark engine, a notebook).

Most methods only decide *what* trains; the caller's ordinary optimiser does the rest. A method that changes
*how* a step is taken (MetaLR meta-learns its learning rates on validation batches) registers a
:class:`TrainerFactory` as its ``MethodSpec.trainer_factory``. Both kinds satisfy :class:`Trainer`, so a training
loop has one code path and never asks which method it is running. The contract lives in petl, not in the
benchmarks, because the methods implement it and petl never imports the benchmarks.

torch is imported for type checking only: the registry imports this module, and ``--help`` and the method
catalogue must stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@runtime_checkable
class Trainer(Protocol):
    """A training-step strategy, driven once per epoch and once per batch by the training loop.

    Per epoch: ``on_epoch_start(epoch)``, then ``train_step`` per batch, then (after validation)
    ``on_epoch_end(metric)`` with the validation select metric (higher is better); then ``learning_rates()`` and
    ``log()`` go into the epoch's history, and ``state_dict()`` into the epoch checkpoint.
    """

    def train_step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> float:
        """One optimisation step on ``(x, y)``; returns the training loss. A non-finite loss must apply no update
        (the loop then fails the run with that loss)."""
        ...

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the epoch's first step (epochs count from 0; a resumed run starts at its next epoch)."""
        ...

    def on_epoch_end(self, metric: float) -> None:
        """Called after validation with the epoch's select metric (higher is better); a plateau schedule reads it,
        a trainer that has no use for it does nothing."""
        ...

    def learning_rates(self) -> dict[str, float]:
        """The rates the last step used, by parameter group, in forward order (the first is the history's ``lr``)."""
        ...

    def log(self) -> dict[str, Any]:
        """What the epoch's history keeps about the trainer (JSON-ready: rates, step counts)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly, as tensors and plain containers only (epoch
        checkpoints are read with ``torch.load(weights_only=True)``)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class TrainerFactory(Protocol):
    """Builds a method's trainer: ``factory(model, options, lr=..., val_batches=..., grad_scaler=...)``.

    ``options`` is the method's options dataclass, ``lr`` the run's learning rate, ``val_batches`` an infinite
    iterator of transformed ``(x, y)`` validation batches on the model's device (a trainer that draws from it
    trains on validation data, which reports then mark), ``grad_scaler`` the fp16 ``GradScaler`` or None.
    """

    def __call__(self, model: nn.Module, options: Any, *, lr: float,
                 val_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                 grad_scaler: Any = None) -> Trainer: ...


def missing_trainer_methods(trainer: Any) -> list[str]:
    """The :class:`Trainer` methods ``trainer`` lacks (empty when it satisfies the contract)."""
    names = ("train_step", "on_epoch_start", "on_epoch_end", "learning_rates", "log", "state_dict",
             "load_state_dict")
    return [n for n in names if not callable(getattr(trainer, n, None))]


def legacy_trainer_factory(factory: Callable[..., Any]) -> TrainerFactory:
    """Wrap a factory registered through the old ``hooks={"trainer": ...}`` keyword, whose trainers may predate
    ``on_epoch_end`` (then optional) and ``learning_rates`` (the loop read the first value of ``log()["lrs"]`` or
    ``log()["rates"]``, else the run's lr). A trainer that already has both is returned unwrapped."""

    def build(model: nn.Module, options: Any, *, lr: float, val_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
              grad_scaler: Any = None) -> Trainer:
        trainer = factory(model, options, lr=lr, val_batches=val_batches, grad_scaler=grad_scaler)
        if not missing_trainer_methods(trainer):
            return trainer
        return _LegacyTrainer(trainer, float(lr))

    build.__doc__ = factory.__doc__
    build.__wrapped__ = factory   # type: ignore[attr-defined]
    return build


class _LegacyTrainer:
    """A pre-contract trainer with the two methods it may lack filled in as the loop used to behave."""

    def __init__(self, inner: Any, lr: float) -> None:
        self._inner, self._lr = inner, lr

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def on_epoch_end(self, metric: float) -> None:
        hook = getattr(self._inner, "on_epoch_end", None)
        if hook is not None:
            hook(metric)

    def learning_rates(self) -> dict[str, float]:
        own = getattr(self._inner, "learning_rates", None)
        if own is not None:
            return dict(own())
        log = self._inner.log()
        return dict(log.get("lrs", log.get("rates", {"": self._lr})))
