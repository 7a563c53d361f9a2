"""The method -> training seam: typed hook fields on MethodSpec (and the old ``hooks=`` keyword mapped onto them),
the one Trainer protocol every trainer satisfies, and TrainState's checkpoint round trip."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

import petl
from benchmarks import engine
from benchmarks.config import RunConfig, Runtime, apply_method_recipes
from benchmarks.training.schedule import Schedule
from benchmarks.training.state import CHECKPOINT_FORMAT, TrainState
from benchmarks.training.trainer import PlainTrainer
from petl import registry
from petl.methods.baselines import two_stage_recipe
from petl.methods.gpaf import gpaf_regularizer
from petl.methods.metalr import MetaLROptions, MetaLRTrainer
from petl.state import head_module, set_trainable
from petl.trainer import Trainer, legacy_trainer_factory, missing_trainer_methods

from _engine_helpers import breast_bundle, patch_data

RT = Runtime(device="cpu", progress=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py says why


@dataclass
class _NoOptions:
    pass


def _head_only(model: nn.Module, options: Any) -> None:
    set_trainable(head_module(model))


class _OldStyleTrainer:
    """A trainer written against the pre-contract protocol: no on_epoch_end, no learning_rates, rates in log()."""

    def __init__(self, model: nn.Module, options: Any, *, lr: float, val_batches: Any, grad_scaler: Any = None):
        self.model, self.lr, self.steps = model, lr, 0
        self.optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def train_step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Any) -> float:
        loss = loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach())

    def log(self) -> dict[str, Any]:
        return {"rates": {"head": self.lr * 0.5}, "steps": self.steps}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])


@pytest.fixture
def register():
    """Register toy methods for one test and remove them afterwards."""
    names: list[str] = []

    def reg(name: str, **kw: Any) -> registry.MethodSpec:
        names.append(name)
        registry.register_method(name, _NoOptions, **kw)(_head_only)
        return petl.get_method(name)
    yield reg
    for name in names:
        registry._METHODS.pop(name, None)


def _tiny(method: str, **kw: Any) -> RunConfig:
    base = dict(method=method, dataset="breastmnist", backbone="test_resnet", weights=None, img_size=32, epochs=2,
                batch_size=16, lr=1e-3, limit_train_batches=2)
    base.update(kw)
    return RunConfig(**base)


def test_builtin_methods_declare_their_hooks_as_fields() -> None:
    declared = {name: (spec.trainer_factory, spec.recipe, spec.regularizer)
                for name in petl.available_methods() for spec in [petl.get_method(name)]}
    assert declared.pop("metalr") == (MetaLRTrainer, None, None)
    assert declared.pop("gpaf") == (None, None, gpaf_regularizer)
    assert declared.pop("two_stage") == (None, two_stage_recipe, None)
    assert declared and all(hooks == (None, None, None) for hooks in declared.values())
    assert not hasattr(petl.get_method("metalr"), "hooks")


def test_old_hooks_keyword_fills_the_typed_fields_and_still_trains(register, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin registering with hooks={"trainer", "recipe", "regularizer"} keeps working end to end: its
    pre-contract trainer is driven by the engine, the history's lr comes from its log()["rates"]."""
    def recipe(options: Any) -> dict[str, Any]:
        return {"epochs": 2, "lr": 2e-3}

    def regularizer(model: nn.Module) -> torch.Tensor:
        return 0.0 * sum(p.sum() for p in head_module(model).parameters())
    spec = register("toy_old_hooks", hooks={"trainer": _OldStyleTrainer, "recipe": recipe,
                                            "regularizer": regularizer})
    assert spec.recipe is recipe and spec.regularizer is regularizer
    assert spec.trainer_factory.__wrapped__ is _OldStyleTrainer
    cfg = apply_method_recipes(_tiny("toy_old_hooks", epochs=5))
    assert (cfg.epochs, cfg.lr) == (2, 2e-3)

    patch_data(monkeypatch, engine, breast_bundle(n_train=48, n_val=32, n_test=16), 32)
    rec = engine.execute(cfg, RT, tmp_path)
    assert rec["status"] == "ok" and rec["epochs_run"] == 2
    assert [h["lr"] for h in rec["history"]] == [1e-3, 1e-3]                       # 0.5 x the run's lr, from log()
    assert [h["trainer"] for h in rec["history"]] == [{"rates": {"head": 1e-3}, "steps": s} for s in (2, 4)]


def test_legacy_wrapper_leaves_a_complete_trainer_alone_and_falls_back_to_the_run_lr() -> None:
    model = petl.build_backbone("test_resnet", None, 2)
    complete = legacy_trainer_factory(MetaLRTrainer)(model, MetaLROptions(), lr=1e-3, val_batches=iter(()))
    assert type(complete) is MetaLRTrainer

    class Silent(_OldStyleTrainer):
        def log(self) -> dict[str, Any]:
            return {}
    set_trainable(head_module(model))
    wrapped = legacy_trainer_factory(Silent)(model, None, lr=3e-4, val_batches=iter(()))
    assert not missing_trainer_methods(wrapped) and isinstance(wrapped, Trainer)
    wrapped.on_epoch_end(0.5)                                                      # absent before: a no-op
    assert wrapped.learning_rates() == {"": 3e-4} and wrapped.steps == 0           # other attributes pass through


@pytest.mark.parametrize("kwargs, fragment", [
    ({"hooks": {"optimizer": lambda *a: None}}, "unknown hook 'optimizer'; known hooks: 'trainer' (now "
                                                "trainer_factory=), 'recipe' (now recipe=)"),
    ({"hooks": {"trainer": _OldStyleTrainer}, "trainer_factory": _OldStyleTrainer}, "hook 'trainer' given twice"),
    ({"recipe": {"epochs": 3}}, "recipe must be callable, got dict"),
])
def test_bad_hook_registrations_are_config_errors(register, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(petl.PetlConfigError, match="toy_bad_hook") as err:
        register("toy_bad_hook", **kwargs)
    assert fragment in str(err.value) and len(str(err.value).splitlines()) == 1
    assert "toy_bad_hook" not in petl.available_methods()                          # nothing half-registered


def test_an_incomplete_trainer_fails_setup_naming_what_it_lacks(register, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The typed field gets no legacy fill-in: a trainer without the whole contract is refused before training."""
    register("toy_incomplete", trainer_factory=_OldStyleTrainer)
    patch_data(monkeypatch, engine, breast_bundle(n_train=32, n_val=32, n_test=16), 32)
    with pytest.raises(petl.PetlConfigError, match="lacks on_epoch_end, learning_rates of the petl.trainer.Trainer"):
        engine.execute(_tiny("toy_incomplete"), RT, tmp_path)
    assert not (tmp_path / "last.pt").exists()


def _val_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    while True:
        yield torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 2, (4,), generator=g)


def test_both_trainers_satisfy_the_one_protocol_and_report_the_rates_they_log() -> None:
    torch.manual_seed(0)
    model = petl.apply(petl.build_backbone("test_resnet", None, 2), "metalr")
    meta = MetaLRTrainer(model, MetaLROptions(), lr=1e-3, val_batches=_val_batches())
    x, y = next(_val_batches())
    model.train()
    meta.train_step(x, y, nn.functional.cross_entropy)
    plain_model = petl.apply(petl.build_backbone("test_resnet", None, 2), "linear_probe")
    plain = PlainTrainer(plain_model, list(head_module(plain_model).parameters()), "adamw",
                         Schedule("constant", 1e-3, 1e-2, epochs=1), 0.0, 0.9)
    plain.on_epoch_start(0)
    for trainer, key in ((meta, "rates"), (plain, "lrs")):
        assert isinstance(trainer, Trainer) and missing_trainer_methods(trainer) == []
        assert trainer.learning_rates() == trainer.log()[key]
    assert list(meta.learning_rates())[0] == "stem" and plain.learning_rates() == {"head": 1e-2}
    meta.on_epoch_end(float("nan"))                          # MetaLR ignores the metric: nothing changes
    assert meta.learning_rates() == meta.log()["rates"]


def test_train_state_keeps_the_best_and_counts_patience() -> None:
    snapshots = iter(range(100))
    state = TrainState(best_state={})
    for epoch, score in enumerate([-math.inf, 0.5, 0.4, 0.5, 0.7]):
        state.observe(epoch, score, lambda: {"n": torch.tensor(next(snapshots))})
    assert (state.best_epoch, state.best_metric, state.patience, state.epoch) == (4, 0.7, 0, 4)
    assert int(state.best_state["n"]) == 2                   # snapshots taken at epochs 0, 1 and 4 only
    state.observe(5, 0.7, lambda: pytest.fail("a tie is no improvement"))
    assert state.patience == 1 and state.stopped_early(1) and not state.stopped_early(2)
    assert not state.stopped_early(0)                        # 0: early stopping off


def test_train_state_checkpoint_round_trip_and_format_gate() -> None:
    state = TrainState(best_state={"w": torch.arange(3.0)}, best_metric=0.8, best_epoch=1, patience=1, epoch=2,
                       history=[{"epoch": e, "val_auc": 0.5 + e / 10} for e in range(3)])
    totals = {"wall_time_s": 3.0, "train_images": 96, "train_time_s": 1.5, "peak_memory_bytes": 7,
              "peak_memory_kind": "cpu_peak_rss", "segments": 1}
    ckpt = state.to_checkpoint(model_state={"w": torch.ones(3)}, trainer={"epoch": 2}, val_cycle={"pos": 4},
                               rng={"torch": torch.get_rng_state()}, totals=totals)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)           # what load_checkpoint reads: plain containers only
    assert loaded["format"] == CHECKPOINT_FORMAT == 2
    back = TrainState.from_checkpoint(loaded)
    assert torch.equal(back.best_state["w"], state.best_state["w"])
    assert (back.best_metric, back.best_epoch, back.patience, back.epoch, back.history) == \
           (0.8, 1, 1, 2, state.history)
    assert back.totals == totals and back.carried
    old = {k: v for k, v in loaded.items() if k not in ("format", "totals")}        # format 1, before totals
    assert TrainState.from_checkpoint(old).totals is None and not TrainState.from_checkpoint(old).carried
    with pytest.raises(petl.RecordError, match="format 3 is newer than this version reads .2.; resume with the "
                                                 "version that wrote it, or delete the run's work folder"):
        TrainState.from_checkpoint({**loaded, "format": 3})
