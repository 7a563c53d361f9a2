"""Side-by-side comparison with the published MedMNIST v2 table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.published import compare, load_reference, medmnist_v2_model_id, ours_by_row, to_markdown
from benchmarks.sweep import SetItem, SweepSpec, expand, load_preset

REPO = Path(__file__).resolve().parent.parent


def preset_config(preset: str = "medmnist-v2", backbone: str = "cifar_resnet18", seed: int = 0,
                  dataset: str = "breastmnist", **changes) -> dict:
    """The config the preset gives for one run, optionally with recipe fields changed (a non-matching run)."""
    data = load_preset(preset)
    spec = SweepSpec(methods=["full_ft"], datasets=[dataset], seeds=[seed], fields=dict(data["config"]),
                     sets=[SetItem(None, "backbone", (backbone,))])
    config = expand(spec)[0].config
    return dataclasses.replace(config, **changes).to_dict()


def record(seed: int, auc: float, acc: float, status: str = "ok", **kwargs) -> dict:
    return {"status": status, "config": preset_config(seed=seed, **kwargs), "metrics": {"test": {"auc": auc, "acc": acc}}}


def test_reference_covers_every_2d_flag_and_four_rows():
    ref = load_reference()
    assert len(ref) == 12 * 4
    assert set(ref.model) == {"resnet18_28", "resnet18_224", "resnet50_28", "resnet50_224"}
    breast = ref[(ref.dataset == "breastmnist") & (ref.model == "resnet18_28")].iloc[0]
    assert (breast.auc, breast.acc) == (0.901, 0.863)


def test_model_id_requires_the_presets_whole_recipe():
    assert medmnist_v2_model_id(preset_config()) == "resnet18_28"
    assert medmnist_v2_model_id(preset_config(dataset="dermamnist", seed=4)) == "resnet18_28"   # any flag / seed
    assert medmnist_v2_model_id(preset_config("medmnist-v2-224", "resnet50")) == "resnet50_224"
    assert medmnist_v2_model_id(preset_config("medmnist-v2-224", "resnet50", resize_mode="bilinear")) is None
    assert medmnist_v2_model_id(preset_config(weights="imagenet")) is None
    assert medmnist_v2_model_id(preset_config(optimizer="adamw")) is None
    for change in ({"epochs": 2}, {"lr": 1e-4}, {"batch_size": 64}, {"schedule": "cosine"},
                   {"early_stop_patience": 5}, {"limit_train_batches": 2}, {"step_milestones": (30, 60)}):
        assert medmnist_v2_model_id(preset_config(**change)) is None, change
    assert medmnist_v2_model_id({**preset_config(), "unknown_field": 1}) is None


def test_committed_records_still_match():
    """The committed MedMNIST v2 records (written before this matching rule) are still recognised."""
    runs = sorted((REPO / "results" / "medmnist-v2" / "runs").glob("*.json"))
    if not runs:
        pytest.skip("no committed medmnist-v2 records")
    ids = [medmnist_v2_model_id(json.loads(p.read_text())["config"]) for p in runs]
    assert all(ids) and set(ids) <= {"resnet18_28", "resnet50_28"}


def test_smoke_run_in_the_same_out_is_not_averaged_in():
    smoke = record(3, 0.5, 0.5, epochs=2)
    rows = ours_by_row([record(0, 0.90, 0.86), smoke])
    assert list(rows.seed) == [0] and list(rows.epochs) == [100]


def test_one_rule_for_every_metric_inside_the_interval_or_outside():
    """Issue 11 replaced the two criteria (mean within 0.02 or paper in the seed range) by one: reproduced iff the
    paper's value lies inside our 95 % interval, else outside with the distance in half-widths."""
    import numpy as np
    from scipy import stats as sps
    ref = load_reference()                                   # breastmnist resnet18_28: AUC 0.901, ACC 0.863
    aucs, accs = [0.855, 0.870, 0.898], [0.70, 0.71, 0.72]
    row = compare(ours_by_row([record(s, a, c) for s, (a, c) in enumerate(zip(aucs, accs))]), ref).iloc[0]
    half = sps.t.ppf(0.975, 2) * np.std(aucs, ddof=1) / np.sqrt(3)
    assert row.auc_ci95_low == pytest.approx(np.mean(aucs) - half)
    assert row.auc_ci95_high == pytest.approx(np.mean(aucs) + half)
    assert row.auc_reproduced == True and row.acc_reproduced == False  # noqa: E712
    assert row.auc_half_widths == pytest.approx((0.901 - np.mean(aucs)) / half)
    assert row.auc_interval.startswith("seeds only, no predictions")
    assert row.verdict.startswith("AUC reproduced (paper 0.901 inside our 95% interval")
    acc_half = sps.t.ppf(0.975, 2) * np.std(accs, ddof=1) / np.sqrt(3)
    assert f"ACC outside (paper 0.863 is {(0.863 - 0.71) / acc_half:.2f} half-widths" in row.verdict
    assert row.verdict.endswith("; investigate") and "0.901" in to_markdown(compare(
        ours_by_row([record(s, a, c) for s, (a, c) in enumerate(zip(aucs, accs))]), ref))


def test_one_seed_without_predictions_is_not_judged():
    table = compare(ours_by_row([record(0, 0.86, 0.75, backbone="cifar_resnet50")]), load_reference())
    row = table.iloc[0]
    assert row.model == "resnet50_28" and row.n_seeds == 1
    assert row.auc_reproduced is None and row.acc_reproduced is None
    assert row.verdict == ("AUC not judged (no interval: 1 seed, no predictions); "
                           "ACC not judged (no interval: 1 seed, no predictions)")
    assert "n/a" in to_markdown(table)


def test_with_predictions_the_interval_covers_test_images():
    import numpy as np
    from benchmarks.predictions import from_arrays
    from benchmarks.stats import interval
    from benchmarks.uncertainty import RunPredictions
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(42), np.ones(114)].astype(np.int64)             # BreastMNIST's test split: 156 images
    preds, recs = RunPredictions(), []
    for seed in range(3):
        z = 1.3 * (2 * y - 1) + rng.normal(size=len(y))
        logits = np.stack([-z / 2, z / 2], axis=1)
        name = f"run{seed}"
        preds.by_run[name], preds.task[name] = {"test": from_arrays(logits, y)}, "multiclass"
        rec = record(seed, 0.9, 0.85)
        rec["run_name"] = name
        recs.append(rec)
    rows = ours_by_row(recs)
    row = compare(rows, load_reference(), preds).iloc[0]
    assert row.auc_interval == "seeds x test images"
    mean, low, high = interval(preds.runs(list(rows.run_name)), "multiclass", "auc")
    assert (row.auc_ours, row.auc_ci95_low, row.auc_ci95_high) == (mean, low, high)
    assert row.auc_reproduced == (low <= 0.901 <= high)


def test_failed_runs_are_not_averaged_in():
    rows = ours_by_row([record(0, 0.9, 0.86), record(1, 0.1, 0.1, status="failed")])
    assert list(rows.seed) == [0]
    assert isinstance(rows, pd.DataFrame)
