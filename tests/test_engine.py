"""Engine behaviour on tiny real-BreastMNIST subsets (timm's tiny ``test_resnet``, random init, 32 px, 2 batches
per epoch), and the issue's acceptance run (pretrained EfficientNet-Lite0 + lora_c, real pipeline)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import engine
from benchmarks.config import RunConfig, Runtime
from benchmarks.environment import process_origin
from benchmarks.training.checkpoint import load_checkpoint
from benchmarks.training.losses import class_weights, make_criterion
from benchmarks.training.schedule import Schedule
from benchmarks.training.trainer import PlainTrainer

from _engine_helpers import breast_bundle, patch_data

RT = Runtime(device="cpu", progress=False)
ACCEPTANCE_EPOCHS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py says why


def tiny(method: str = "full_ft", **kw: Any) -> RunConfig:
    base = dict(method=method, dataset="breastmnist", backbone="test_resnet", weights=None, img_size=32, epochs=3,
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
    carried = load_checkpoint(tmp_path / "resumed")["totals"]
    t0 = time.perf_counter()
    resumed = engine.execute(tiny(), RT, tmp_path / "resumed")
    this_process = time.perf_counter() - t0
    assert resumed["status"] == "ok"
    assert _strip(resumed) == _strip(full)
    # the record covers the whole run: the first process's time up to its checkpoint plus this process's
    assert carried["wall_time_s"] <= part["wall_time_s"]
    assert carried["wall_time_s"] < resumed["wall_time_s"] <= carried["wall_time_s"] + this_process
    assert resumed["wall_time_s"] >= sum(h["epoch_time_s"] for h in resumed["history"])
    eff = resumed["efficiency"]
    assert eff["segments"] == 2 and eff["measured_from_epoch"] == 0
    # one entry per process, each with this checkout's origin, the epoch it started at and its own share
    first, second = eff["processes"]
    assert carried["processes"] == [first]
    assert (first["from_epoch"], second["from_epoch"]) == (0, 1)
    assert {k: first[k] for k in ("commit", "dirty", "host")} == process_origin("cpu")
    assert 0 < first["wall_time_s"] <= carried["wall_time_s"] + 1e-3 and 0 < second["wall_time_s"] <= this_process
    assert all(p["cpu_share"] > 0 for p in eff["processes"])
    assert eff["peak_memory_bytes"] >= part["efficiency"]["peak_memory_bytes"] > 0
    # throughput over both processes: 1st: 2 batches of 16 (fewer than the 3 warm-up batches: all counted);
    # 2nd: 4 batches, the first 3 skipped as warm-up
    final = load_checkpoint(tmp_path / "resumed")["totals"]
    assert (carried["train_images"], final["train_images"]) == (32, 48)
    assert eff["train_images_per_s"] == final["train_images"] / final["train_time_s"]


#: the epoch checkpoint's layout before the "format" key (format 1): what last.pt files already on disk hold
FORMAT_1_KEYS = ("epoch", "state", "trainer", "val_cycle", "rng", "best_state", "best_metric", "best_epoch",
                 "patience", "history", "totals")


def test_format_1_checkpoints_resume_bit_exactly(bundle: Any, tmp_path: Path) -> None:
    """A last.pt written before checkpoints carried a format key (with totals, and the older one without) resumes
    to the uninterrupted run; without totals the record measures from the resumed epoch, as it always did."""
    full = engine.execute(tiny(), RT, tmp_path / "full")
    engine.execute(tiny(), RT, tmp_path / "part", stop_after_epoch=1)
    ckpt = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert ckpt.pop("format") == 2 and tuple(ckpt) == FORMAT_1_KEYS
    old_totals = {k: v for k, v in ckpt["totals"].items() if k != "processes"}     # as written before entries
    for name, layout in (("with_totals", {**ckpt, "totals": old_totals}),
                         ("without_totals", {k: v for k, v in ckpt.items() if k != "totals"})):
        (tmp_path / name).mkdir()
        torch.save(layout, tmp_path / name / "last.pt")
        resumed = engine.execute(tiny(), RT, tmp_path / name)
        assert resumed["status"] == "ok" and _strip(resumed) == _strip(full)
        assert resumed["efficiency"]["measured_from_epoch"] == (0 if name == "with_totals" else 1)
        assert resumed["efficiency"]["segments"] == (2 if name == "with_totals" else 1)
        # the first process's origin was not checkpointed (format 2 before process entries): unknown, not guessed
        origins = [p["commit"] for p in resumed["efficiency"]["processes"]]
        assert origins == ([None, process_origin("cpu")["commit"]] if name == "with_totals"
                           else [process_origin("cpu")["commit"]])
        assert load_checkpoint(tmp_path / name)["format"] == 2                # rewritten in the current format


def test_nan_validation_auc_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation split without one class makes AUC selection impossible: a failed run naming the class."""
    b = breast_bundle(n_train=64, n_val=32, n_test=32)
    keep = b.val.labels == 1
    b.val.images, b.val.labels = b.val.images[keep], b.val.labels[keep]
    patch_data(monkeypatch, engine, b, 32)
    monkeypatch.setattr(engine, "build_model", lambda *a, **k: pytest.fail("trained despite an undefined AUC"))
    rec = engine.execute(tiny(), RT, tmp_path / "auc")
    assert rec["status"] == "failed" and rec["epochs_run"] == 0
    assert "class(es) absent from its validation split: 'malignant' (0)" in rec["reason"]
    assert "--select-metric loss" in rec["reason"] and "every class" in rec["reason"]
    monkeypatch.undo()
    patch_data(monkeypatch, engine, b, 32)
    ok = engine.execute(tiny(select_metric="loss", epochs=1), RT, tmp_path / "loss")
    assert ok["status"] == "ok" and math.isnan(ok["metrics"]["val"]["auc"])


def test_nan_select_score_during_training_fails_the_run(bundle: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_select_value", lambda metrics, select: float("nan"))
    rec = engine.execute(tiny(epochs=2), RT, tmp_path)
    assert rec["status"] == "failed" and "validation auc is NaN at epoch 0" in rec["reason"]
    assert rec["epochs_run"] == 0 and rec["metrics"]["test"] == {}


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizers_build_and_step(name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    sched = Schedule("constant", 0.1, 0.2, epochs=1)
    tr = PlainTrainer(model, list(model[2].parameters()), name, sched, weight_decay=1e-4, momentum=0.9)
    expected = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    assert type(tr.optimizer) is expected
    tr.on_epoch_start(0)
    assert [g["lr"] for g in tr.optimizer.param_groups] == [0.1, 0.2]
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    losses = [tr.train_step(x, y, torch.nn.functional.cross_entropy) for _ in range(20)]
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert losses[-1] < losses[0]
    if name == "sgd":
        assert tr.optimizer.defaults["momentum"] == 0.9 and "momentum_buffer" in tr.optimizer.state[model[0].weight]


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
    """head_lr is the warm-up rate; afterwards the whole network, head included, trains at lr."""
    cfg = tiny(warmup_head_epochs=1, epochs=2, head_lr=1e-2, schedule="constant")
    rec = engine.execute(cfg, RT, tmp_path)
    assert rec["status"] == "ok"
    assert rec["history"][0]["trainer"]["lrs"] == {"body": 0.0, "head": 1e-2}
    assert rec["history"][1]["trainer"]["lrs"] == {"body": 1e-3, "head": 1e-3}


def test_head_lr_without_warmup_holds_for_the_whole_run() -> None:
    sched = Schedule("cosine", 1e-3, 1e-2, epochs=4)
    assert [sched.lrs(e)["head"] / sched.lrs(e)["body"] for e in range(3)] == pytest.approx([10.0] * 3)


def test_two_stage_recipe_runs_the_head_at_the_small_lr_in_stage_2() -> None:
    from benchmarks.config import apply_method_recipes
    cfg = apply_method_recipes(RunConfig(method="two_stage", dataset="breastmnist", epochs=8))
    assert (cfg.warmup_head_epochs, cfg.head_lr, cfg.lr, cfg.schedule) == (5, 1e-3, 3e-5, "cosine")
    sched = Schedule(cfg.schedule, cfg.lr, cfg.head_lr, cfg.epochs, cfg.min_lr,
                     warmup_head_epochs=cfg.warmup_head_epochs)
    assert [sched.lrs(e) for e in range(5)] == [{"body": 0.0, "head": 1e-3}] * 5          # stage 1: head only
    stage2 = [sched.lrs(e) for e in (5, 6, 7)]                                             # stage 2: all, cosine
    assert [r["body"] for r in stage2] == pytest.approx([3e-5, 2.25e-5, 0.75e-5])          # 3e-5 x (1 + cos(pi t))/2
    assert all(r["head"] == r["body"] for r in stage2)


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
    a, f = again["efficiency"], first["efficiency"]
    assert a["measured_from_epoch"] == f["measured_from_epoch"] == 0 and (f["segments"], a["segments"]) == (1, 2)
    # no epoch trained the second time: the whole-run figures are the first process's, carried over
    assert a["train_images_per_s"] == f["train_images_per_s"] and a["peak_memory_bytes"] == f["peak_memory_bytes"]
    assert again["wall_time_s"] > sum(h["epoch_time_s"] for h in first["history"])


def test_early_stopping(bundle: Any, tmp_path: Path) -> None:
    rec = engine.execute(tiny(epochs=6, early_stop_patience=1, lr=1e-9, select_metric="loss"), RT, tmp_path)
    assert rec["status"] == "ok" and rec["epochs_run"] < 6


def test_schedules() -> None:
    cos = Schedule("cosine", 1.0, 2.0, epochs=5, min_lr=0.1)
    assert cos.lrs(0)["body"] == pytest.approx(1.0) and cos.lrs(5)["body"] == pytest.approx(0.1)   # after the last
    assert cos.lrs(5)["head"] == pytest.approx(0.1)
    factor = 0.5 * (1 + math.cos(math.pi * 4 / 5))                            # the last epoch still trains
    assert cos.lrs(4)["body"] == pytest.approx(0.1 + 0.9 * factor) and factor > 0
    assert cos.lrs(4)["head"] == pytest.approx(0.1 + 1.9 * factor)
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


def test_acceptance_pretrained_lite0_lora_c_breastmnist(tmp_path: Path, data_root: Path) -> None:
    """The issue's acceptance run through the engine's normal path: the registry's ``load_dataset`` (official
    BreastMNIST splits, 28 px file), the default transforms (64 px, ImageNet normalisation for the pretrained
    backbone), pretrained EfficientNet-Lite0 + lora_c, CPU, 4 epochs. Chance is AUC 0.5; the threshold is 0.75.
    Measured: test AUC 0.903 (best epoch 2), ~30-40 s on one thread. A default test: it is the acceptance."""
    cfg = RunConfig(method="lora_c", dataset="breastmnist", backbone="efficientnet_lite0", weights="imagenet",
                    img_size=64, epochs=ACCEPTANCE_EPOCHS, batch_size=32, lr=3e-3)
    assert cfg.norm == "imagenet" and cfg.augment == "none"
    rec = engine.execute(cfg, Runtime(device="cpu", progress=False, data_root=data_root), tmp_path)
    test = rec["metrics"]["test"]
    print(f"\nacceptance: test AUC {test['auc']:.4f} ACC {test['acc']:.4f} (n={test['n']}) best epoch "
          f"{rec['best_epoch']} of {rec['epochs_run']}, trainable {rec['params']['trainable']}, "
          f"wall {rec['wall_time_s']:.0f}s")
    assert rec["status"] == "ok" and test["n"] == 156 and test["auc"] >= 0.75
