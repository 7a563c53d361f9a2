"""Per-image predictions (benchmarks.predictions): bit-exact round trip, one clear error for a bad file, written
by the engine + runner beside the record (before it, with its sha256) and reproducing the record's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from benchmarks import engine, predictions as P
from benchmarks import execution
from benchmarks.config import RunConfig, Runtime
from benchmarks.metrics import compute_metrics
from benchmarks.store import RunStore
from benchmarks.sweep import PlannedRun

from _engine_helpers import breast_bundle, patch_data


def _splits(seed: int = 0) -> dict[str, P.SplitPredictions]:
    rng = np.random.default_rng(seed)
    return {"val": P.from_arrays(rng.normal(size=(20, 2)), rng.integers(0, 2, 20)),
            "test": P.from_arrays(torch.from_numpy(rng.normal(size=(31, 7))), torch.from_numpy(rng.integers(0, 7, 31)))}


def test_round_trip_is_bit_exact_and_the_digest_is_the_files(tmp_path: Path) -> None:
    splits = _splits()
    entry = P.write(tmp_path / "r.predictions.npz", splits)
    data = (tmp_path / "r.predictions.npz").read_bytes()
    assert entry == {"file": "r.predictions.npz", "sha256": P.sha256_bytes(data), "splits": ["test", "val"],
                     "n": {"val": 20, "test": 31}}
    back = P.read(tmp_path / "r.predictions.npz", entry["sha256"])
    for split, p in splits.items():
        for f in P.FIELDS:
            a, b = getattr(p, f), getattr(back[split], f)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert back["test"].index.tolist() == list(range(31))
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_files_give_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.predictions.npz"
    entry = P.write(path, _splits())
    with pytest.raises(P.PredictionsError, match="missing") as missing:
        P.read(tmp_path / "other.predictions.npz")
    assert "other.predictions.npz" in str(missing.value) and "\n" not in str(missing.value)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(P.PredictionsError, match="does not match the sha256") as mismatch:
        P.read(path, entry["sha256"])
    assert str(path) in str(mismatch.value)
    with pytest.raises(P.PredictionsError, match="cannot be read") as corrupt:
        P.read(path)                                   # no digest to compare: the zip itself is broken
    assert str(path) in str(corrupt.value) and "\n" not in str(corrupt.value)
    assert P.load_for_record({"run_name": "old"}, tmp_path) is None     # an older record: none, never a crash


@pytest.mark.usefixtures("one_torch_thread")
def test_engine_predictions_reproduce_the_records_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = breast_bundle(n_train=64, n_val=32, n_test=40)
    patch_data(monkeypatch, engine, bundle, 32)
    config = RunConfig(method="full_ft", dataset="breastmnist", backbone="test_resnet", weights=None, img_size=32,
                       epochs=2, batch_size=16, limit_train_batches=2)
    rec = engine.execute(config, Runtime(device="cpu", progress=False), tmp_path)
    preds = rec["predictions"]
    for split in ("val", "test"):
        p = preds[split]
        assert p.labels.tolist() == getattr(bundle, split).labels.tolist()
        assert p.index.tolist() == list(range(len(p.labels))) and p.logits.dtype == np.float32
        again = compute_metrics(p.labels, torch.from_numpy(p.logits), "multiclass", list(bundle.class_names))
        assert again == {k: v for k, v in rec["metrics"][split].items() if k != "loss"}


def test_runner_writes_the_file_before_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig(method="linear_probe", dataset="breastmnist", seed=0)
    store = RunStore(tmp_path)
    store.prepare()
    monkeypatch.setattr(execution, "execute", lambda c, r, w, stop_after_epoch=None: {
        "status": "ok", "reason": None, "metrics": {"val": {}, "test": {}}, "predictions": _splits(1)})
    written = store.write

    def write(record: dict[str, Any]) -> Path:
        assert P.path_for(store.runs_dir, config.run_name).is_file()    # the file exists when the record lands
        return written(record)

    monkeypatch.setattr(store, "write", write)
    record = execution.train_and_record(PlannedRun(config, "linear_probe"), Runtime(device="cpu"), store)
    on_disk = store.read(config)
    assert on_disk["predictions"] == record["predictions"]
    assert on_disk["predictions"]["file"] == f"{config.run_name}.predictions.npz"
    loaded = P.load_for_record(on_disk, store.runs_dir)
    assert loaded["test"].logits.tobytes() == _splits(1)["test"].logits.tobytes()
