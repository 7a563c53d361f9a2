"""Side-by-side comparison with the published MedMNIST v2 table."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.published import compare, load_reference, medmnist_v2_model_id, ours_by_row, to_markdown

V2_RECIPE = {"method": "full_ft", "weights": None, "norm": "half", "augment": "none", "data_size": None,
             "optimizer": "adam"}


def record(seed: int, auc: float, acc: float, backbone: str = "cifar_resnet18", img_size: int = 28,
           resize_mode: str = "bilinear", status: str = "ok") -> dict:
    cfg = {**V2_RECIPE, "dataset": "breastmnist", "backbone": backbone, "img_size": img_size,
           "resize_mode": resize_mode, "seed": seed, "epochs": 100}
    return {"status": status, "config": cfg, "metrics": {"test": {"auc": auc, "acc": acc}}}


def test_reference_covers_every_2d_flag_and_four_rows():
    ref = load_reference()
    assert len(ref) == 12 * 4
    assert set(ref.model) == {"resnet18_28", "resnet18_224", "resnet50_28", "resnet50_224"}
    breast = ref[(ref.dataset == "breastmnist") & (ref.model == "resnet18_28")].iloc[0]
    assert (breast.auc, breast.acc) == (0.901, 0.863)


def test_model_id_follows_the_recipe():
    assert medmnist_v2_model_id(record(0, .9, .8)["config"]) == "resnet18_28"
    assert medmnist_v2_model_id(record(0, .9, .8, "resnet50", 224, "nearest")["config"]) == "resnet50_224"
    assert medmnist_v2_model_id(record(0, .9, .8, "resnet50", 224, "bilinear")["config"]) is None
    pretrained = {**record(0, .9, .8)["config"], "weights": "imagenet"}
    assert medmnist_v2_model_id(pretrained) is None
    assert medmnist_v2_model_id({**record(0, .9, .8)["config"], "optimizer": "adamw"}) is None


def test_verdicts():
    ref = load_reference()
    close = ours_by_row([record(s, 0.90 + d, 0.86 + d) for s, d in enumerate((-0.01, 0.0, 0.01))])
    row = compare(close, ref).iloc[0]
    assert row.verdict == "reproduced" and row.n_seeds == 3
    assert row.auc_diff == pytest.approx(0.0 - 0.001, abs=1e-9)
    # mean off by more than 0.02, but the paper's value inside our seed range: still reproduced
    wide = ours_by_row([record(0, 0.80, 0.80), record(1, 0.92, 0.90), record(2, 0.81, 0.79)])
    assert compare(wide, ref).iloc[0].verdict == "reproduced"
    far = ours_by_row([record(0, 0.70, 0.70), record(1, 0.72, 0.71)])
    table = compare(far, ref)
    assert table.iloc[0].verdict == "NOT reproduced (AUC, ACC): investigate"
    # one metric inside the seed range, the other not: the verdict names which
    split = ours_by_row([record(0, 0.85, 0.79), record(1, 0.86, 0.88), record(2, 0.87, 0.84)])
    assert compare(split, ref).iloc[0].verdict == "NOT reproduced (AUC): investigate; ACC reproduced"
    assert "0.901" in to_markdown(table)


def test_failed_runs_are_not_averaged_in():
    rows = ours_by_row([record(0, 0.9, 0.86), record(1, 0.1, 0.1, status="failed")])
    assert list(rows.seed) == [0]
    assert isinstance(rows, pd.DataFrame)
