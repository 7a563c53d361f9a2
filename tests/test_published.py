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


def test_verdicts_name_the_criterion():
    ref = load_reference()
    close = ours_by_row([record(s, 0.90 + d, 0.86 + d) for s, d in enumerate((-0.01, 0.0, 0.01))])
    row = compare(close, ref).iloc[0]
    assert row.verdict == ("AUC reproduced (mean within 0.02 and paper inside seed range); "
                           "ACC reproduced (mean within 0.02 and paper inside seed range)")
    assert row.n_seeds == 3 and row.auc_paper_in_seed_range and row.auc_within_tol
    assert row.auc_diff == pytest.approx(0.0 - 0.001, abs=1e-9)
    # mean off by more than 0.02, but the paper's value inside our seed range: reproduced by that criterion only
    wide = compare(ours_by_row([record(0, 0.80, 0.80), record(1, 0.92, 0.90), record(2, 0.81, 0.79)]), ref).iloc[0]
    assert wide.verdict == "AUC reproduced (paper inside seed range); ACC reproduced (paper inside seed range)"
    assert not wide.auc_within_tol and wide.auc_paper_in_seed_range
    far = compare(ours_by_row([record(0, 0.70, 0.70), record(1, 0.72, 0.71)]), ref)
    assert far.iloc[0].verdict.startswith("AUC NOT reproduced (mean -0.191 from paper, beyond 0.02; paper outside "
                                          "seed range)")
    assert far.iloc[0].verdict.endswith("; investigate") and far.iloc[0].auc_paper_in_seed_range == False  # noqa: E712
    # one metric inside the seed range, the other not: the verdict names which
    split = compare(ours_by_row([record(0, 0.85, 0.79), record(1, 0.86, 0.88), record(2, 0.87, 0.84)]), ref)
    assert split.iloc[0].verdict == ("AUC NOT reproduced (mean -0.041 from paper, beyond 0.02; paper outside seed "
                                     "range); ACC reproduced (paper inside seed range); investigate")
    assert "0.901" in to_markdown(far)


def test_one_seed_is_too_few_to_judge_spread():
    table = compare(ours_by_row([record(0, 0.86, 0.75, backbone="cifar_resnet50")]), load_reference())
    row = table.iloc[0]
    assert row.model == "resnet50_28" and row.n_seeds == 1
    assert row.auc_paper_in_seed_range is None and row.acc_paper_in_seed_range is None
    assert row.verdict == ("AUC reproduced (mean within 0.02; 1 seed: too few seeds to judge spread); "
                           "ACC NOT reproduced (mean -0.062 from paper, beyond 0.02; 1 seed: too few seeds to judge "
                           "spread); investigate")
    assert "n/a (< 2 seeds)" in to_markdown(table)


def test_failed_runs_are_not_averaged_in():
    rows = ours_by_row([record(0, 0.9, 0.86), record(1, 0.1, 0.1, status="failed")])
    assert list(rows.seed) == [0]
    assert isinstance(rows, pd.DataFrame)
