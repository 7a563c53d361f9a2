"""Engine behaviour on tiny real-BreastMNIST subsets (ResNet-18, random init, 32 px, 2 batches per epoch)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import engine
from benchmarks.config import RunConfig, Runtime
from benchmarks.training.losses import class_weights, make_criterion
from benchmarks.training.schedule import Schedule

from _engine_helpers import breast_bundle, patch_data

RT = Runtime(device="cpu", progress=False)


def tiny(method: str = "full_ft", **kw: Any) -> RunConfig:
    base = dict(method=method, dataset="breastmnist", backbone="resnet18", weights=None, img_size=32, epochs=3,
                batch_size=16, lr=1e-3, limit_train_batches=2)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def bundle(monkeypatch: pytest.MonkeyPatch) -> Any:
    b = breast_bundle(n_train=64, n_val=32, n_test=32)
    patch_data(monkeypatch, engine, b, 32)
    return b


def _strip(record: dict) -> tuple:
    hist = [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in record["history"]]
    return record["metrics"], hist, record["best_epoch"]


def test_record_shape_and_artifacts(bundle: Any, tmp_path: Path) -> None:
    rec = engine.execute(tiny(), RT, tmp_path)
    assert rec["status"] == "ok" and rec["reason"] is None and rec["epochs_run"] == 3
    assert set(rec["metrics"]) == {"val", "test"} and 0 <= rec["metrics"]["test"]["auc"] <= 1
    assert rec["adapter_bytes"] == (tmp_path / "adapter.safetensors").stat().st_size > 0
    assert (tmp_path / "last.pt").is_file()
    eff = rec["efficiency"]
    assert eff["peak_memory_kind"] == "cpu_peak_rss" and eff["peak_memory_bytes"] > 0
    assert eff["train_images_per_s"] > 0 and eff["infer_images_per_s"] > 0 and eff["device"] == "cpu"
    assert rec["params"]["trainable"] == rec["params"]["total"]
    assert {"epoch", "train_loss", "val_loss", "val_acc", "val_auc", "lr", "epoch_time_s", "trainer"} <= set(rec["history"][0])


def test_same_seed_same_metrics(bundle: Any, tmp_path: Path) -> None:
    a = engine.execute(tiny(), RT, tmp_path / "a")
    b = engine.execute(tiny(), RT, tmp_path / "b")
    assert _strip(a) == _strip(b)


def test_resume_reproduces_uninterrupted_run(bundle: Any, tmp_path: Path) -> None:
    full = engine.execute(tiny(), RT, tmp_path / "full")
    part = engine.execute(tiny(), RT, tmp_path / "resumed", stop_after_epoch=1)
    assert part["status"] == "interrupted" and part["epochs_run"] == 1
    resumed = engine.execute(tiny(), RT, tmp_path / "resumed")
    assert resumed["status"] == "ok"
    assert _strip(resumed) == _strip(full)


def test_non_finite_loss_fails_the_run(bundle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.make_loss_fn
    calls = {"n": 0}

    def poisoned(criterion: Any, model: Any) -> Any:
        fn = real(criterion, model)

        def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return fn(z, y) * (float("nan") if calls["n"] == 4 else 1.0)
        return loss
    monkeypatch.setattr(engine, "make_loss_fn", poisoned)
    rec = engine.execute(tiny(), RT, tmp_path)
    assert rec["status"] == "failed" and "epoch 1 batch 1" in rec["reason"] and rec["epochs_run"] == 1


def test_head_warmup_trains_only_head_first(bundle: Any, tmp_path: Path) -> None:
    cfg = tiny(warmup_head_epochs=1, epochs=2, head_lr=1e-2, schedule="constant")
    rec = engine.execute(cfg, RT, tmp_path)
    assert rec["status"] == "ok"
    assert rec["history"][0]["trainer"]["lrs"] == {"body": 0.0, "head": 1e-2}
    assert rec["history"][1]["trainer"]["lrs"] == {"body": 1e-3, "head": 1e-2}


def _worse_each_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the validation score fall every epoch, so epoch 0 stays the best."""
    scores = iter(range(100, 0, -1))
    monkeypatch.setattr(engine, "_select_value", lambda metrics, select: float(next(scores)))


def test_best_epoch_inside_head_warmup_keeps_its_whole_state(bundle: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file
    _worse_each_epoch(monkeypatch)
    warm_only = engine.execute(tiny(warmup_head_epochs=1, epochs=1), RT, tmp_path / "one")
    _worse_each_epoch(monkeypatch)
    rec = engine.execute(tiny(warmup_head_epochs=1, epochs=2), RT, tmp_path / "two")
    assert warm_only["best_epoch"] == rec["best_epoch"] == 0 and rec["epochs_run"] == 2
    # the kept model is the epoch-0 model as a whole: the body as it was during the warm-up, not epoch 1's body
    a, b = load_file(tmp_path / "one" / "adapter.safetensors"), load_file(tmp_path / "two" / "adapter.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("layer1.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_early_stop_trains_nothing_more(bundle: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _worse_each_epoch(monkeypatch)
    cfg = tiny(epochs=6, early_stop_patience=1)
    first = engine.execute(cfg, RT, tmp_path)   # its checkpoint is what a kill before the record write leaves
    assert first["epochs_run"] == 2
    again = engine.execute(cfg, RT, tmp_path)
    assert again["status"] == "ok" and _strip(again) == _strip(first)
    assert again["efficiency"]["measured_from_epoch"] == 6 and first["efficiency"]["measured_from_epoch"] == 0


def test_early_stopping(bundle: Any, tmp_path: Path) -> None:
    rec = engine.execute(tiny(epochs=6, early_stop_patience=1, lr=1e-9, select_metric="loss"), RT, tmp_path)
    assert rec["status"] == "ok" and rec["epochs_run"] < 6


def test_schedules() -> None:
    cos = Schedule("cosine", 1.0, 2.0, epochs=5, min_lr=0.1)
    assert cos.lrs(0)["body"] == pytest.approx(1.0) and cos.lrs(4)["body"] == pytest.approx(0.1)
    assert cos.lrs(4)["head"] == pytest.approx(0.1)
    step = Schedule("step", 1.0, 1.0, epochs=10, milestones=(3, 6), gamma=0.1)
    assert [round(step.lrs(e)["body"], 6) for e in (2, 3, 6)] == [1.0, 0.1, 0.01]
    warm = Schedule("constant", 1.0, 1.0, epochs=5, warmup_epochs=1, warmup_head_epochs=1)
    assert warm.lrs(0)["body"] == 0.0 and warm.lrs(1)["body"] == pytest.approx(0.5) and warm.lrs(2)["body"] == 1.0
    plat = Schedule("plateau", 1.0, 1.0, epochs=20)
    for m in (0.5, 0.4, 0.4, 0.4):
        plat.observe(m)
    assert plat.lrs(5)["body"] == pytest.approx(0.1)


def test_losses() -> None:
    y = torch.tensor([0, 0, 0, 1])
    assert class_weights(y, 2).tolist() == pytest.approx([4 / 6, 2.0])
    z = torch.randn(4, 2)
    for kind in ("ce", "weighted_ce", "focal"):
        assert math.isfinite(float(make_criterion(kind, "multiclass", y, 2)(z, y)))
        yl = torch.tensor([[0, 1.0], [1, 0], [1, 1], [0, 0]])
        assert math.isfinite(float(make_criterion(kind, "multilabel", yl, 2)(z, yl)))
    focal0 = make_criterion("focal", "multiclass", y, 2, gamma=0.0)
    assert float(focal0(z, y)) == pytest.approx(float(make_criterion("ce", "multiclass", y, 2)(z, y)))


@pytest.mark.slow
def test_acceptance_pretrained_lite0_lora_c_breastmnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretrained EfficientNet-Lite0 + lora_c on the full real BreastMNIST splits (28 px file, 64 px input)."""
    b = breast_bundle(n_train=10_000, n_val=10_000, n_test=10_000)
    patch_data(monkeypatch, engine, b, 64)
    cfg = RunConfig(method="lora_c", dataset="breastmnist", backbone="efficientnet_lite0", weights="imagenet",
                    img_size=64, epochs=4, batch_size=32, lr=3e-3)
    rec = engine.execute(cfg, RT, tmp_path)
    print(f"\nacceptance: test AUC {rec['metrics']['test']['auc']:.4f} ACC {rec['metrics']['test']['acc']:.4f} "
          f"best epoch {rec['best_epoch']} trainable {rec['params']['trainable']} wall {rec['wall_time_s']:.0f}s")
    assert rec["status"] == "ok" and rec["metrics"]["test"]["auc"] > 0.75
