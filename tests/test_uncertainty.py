"""Report tables from per-image predictions: intervals and paired tests (Holm, DeLong), old records shown as
"no predictions", a corrupt predictions file reported in one line while the rest is built, selection on
validation that test results cannot move, and validation-trained methods marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import predictions as P
from benchmarks.config import RunConfig
from benchmarks.report import build_reports, main
from benchmarks.selection import VALIDATION_MARK, mark_validation_trained, select_on_validation
from benchmarks.store import atomic_write_json

N_TEST, N_VAL = 120, 60
LABELS = {"test": np.r_[np.zeros(70), np.ones(50)].astype(np.int64),
          "val": np.r_[np.zeros(35), np.ones(25)].astype(np.int64)}


def _logits(split: str, signal: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = LABELS[split]
    z = signal * (2 * y - 1) + rng.normal(size=len(y))
    return np.stack([-z / 2, z / 2], axis=1).astype(np.float32)


def write_run(out: Path, method: str, seed: int, signal: float, *, lr: float = 1e-3, label: str | None = None,
              with_predictions: bool = True, val_signal: float | None = None, **fields) -> RunConfig:
    from benchmarks.metrics import compute_metrics
    import torch
    config = RunConfig(method=method, dataset="breastmnist", seed=seed, lr=lr, **fields)
    logits = {"test": _logits("test", signal, 100 + seed), "val": _logits("val", signal if val_signal is None
                                                                           else val_signal, 200 + seed)}
    metrics = {s: {**compute_metrics(LABELS[s], torch.from_numpy(logits[s]), "multiclass"), "loss": 0.5}
               for s in logits}
    record = {"run_name": config.run_name, "key": config.key(), "label": label or method, "config": config.to_dict(),
              "status": "ok", "reason": None, "runtime": {"device": "cpu"}, "metrics": metrics,
              "params": {"total": 1000, "trainable": 10, "percent_trainable": 1.0}, "adapter_bytes": 40,
              "efficiency": {"device": "cpu"}, "history": []}
    if with_predictions:
        record["predictions"] = P.write(P.path_for(out / "runs", config.run_name),
                                        {s: P.from_arrays(logits[s], LABELS[s]) for s in logits})
    atomic_write_json(out / "runs" / f"{config.run_name}.json", record)
    return config


def test_intervals_paired_and_clinical_tables_from_predictions(tmp_path: Path) -> None:
    for seed in range(3):
        write_run(tmp_path, "full_ft", seed, 0.6)
        write_run(tmp_path, "lora_c", seed, 1.6)
        write_run(tmp_path, "bitfit", seed, 0.6, with_predictions=False)     # an older record
    r = build_reports(tmp_path, reference="full_ft", metric="auc")

    ci = r.intervals.set_index(["method", "metric"])
    row = ci.loc[("lora_c", "auc")]
    assert row["interval"] == "seeds x test images" and row["n_with_predictions"] == 3 and row["n_test"] == N_TEST
    assert row["ci95_low"] < row["mean"] < row["ci95_high"]
    assert np.isclose(row["mean"], r.summary.set_index("method").loc["lora_c", "auc_mean"])
    assert ci.loc[("bitfit", "auc"), "interval"] == "no predictions" and np.isnan(ci.loc[("bitfit", "auc"), "ci95_low"])

    paired = r.paired.set_index("method")
    lora = paired.loc["lora_c"]
    assert lora["n_seed_pairs"] == 3 and lora["diff"] > 0 and lora["ci95_low"] > 0
    assert lora["p_delong"] < 0.001 and lora["p_bootstrap"] < 0.01
    assert paired.loc["bitfit", "note"].startswith("no predictions") and np.isnan(paired.loc["bitfit", "p_bootstrap"])
    # Holm over the one finite p of each column: unchanged (family of 1)
    assert lora["p_delong_holm"] == lora["p_delong"] and lora["p_bootstrap_holm"] == lora["p_bootstrap"]

    clin = r.clinical.set_index("method")
    assert clin.loc["lora_c", "n_with_predictions"] == 3 and 0 < clin.loc["lora_c", "auprc_mean"] <= 1
    assert 0 <= clin.loc["lora_c", "sensitivity_mean"] <= 1 and np.isnan(clin.loc["bitfit", "ece_mean"])
    md = (tmp_path / "tables" / "report.md").read_text()
    assert "seeds drawn with replacement" in md and "Holm" in md and "3 recorded before predictions" in md
    # one finite bootstrap p (bitfit has none): the floor Holm can reach is 1 x 2 / (2000 + 1)
    assert "across the table's 1 comparison; with 2000 resamples no p_bootstrap_holm can fall below 0.001" in md
    for name in ("intervals", "paired", "clinical"):
        assert (tmp_path / "tables" / f"{name}.csv").stat().st_size > 0


def test_corrupt_predictions_file_is_one_line_and_the_report_completes(tmp_path: Path, capsys) -> None:
    for seed in range(3):
        write_run(tmp_path, "full_ft", seed, 0.6)
        bad = write_run(tmp_path, "lora_c", seed, 1.6)
    path = P.path_for(tmp_path / "runs", bad.run_name)
    path.write_bytes(b"not a zip at all")
    assert main([str(tmp_path)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(path) in err[0] and "sha256" in err[0]
    intervals = pd.read_csv(tmp_path / "tables" / "intervals.csv").set_index(["method", "metric"])
    assert intervals.loc[("lora_c", "auc"), "n_with_predictions"] == 2       # the other two seeds still count
    assert "2 of 3 seeds" in intervals.loc[("lora_c", "auc"), "interval"]
    assert str(path) in (tmp_path / "tables" / "report.md").read_text()


def test_a_seed_recorded_before_predictions_leaves_the_interval_to_the_seeds_that_have_them(tmp_path: Path) -> None:
    """A method whose first seed predates per-image predictions (as MedMNIST v2's seed 0 beside a new seed 1):
    the report completes and the interval is over the seeds with predictions, saying so."""
    write_run(tmp_path, "full_ft", 0, 0.6, with_predictions=False)
    for seed in (1, 2):
        write_run(tmp_path, "full_ft", seed, 0.6)
    assert main([str(tmp_path)]) == 0
    row = pd.read_csv(tmp_path / "tables" / "intervals.csv").set_index(["method", "metric"]).loc[("full_ft", "auc")]
    assert row["n_with_predictions"] == 2 and "2 of 3 seeds" in row["interval"] and row["ci95_low"] < row["ci95_high"]


def test_selection_on_validation_ignores_test(tmp_path: Path) -> None:
    """Config lr=1e-4 is better on validation, lr=1e-3 on test: validation decides, and rewriting every test
    figure and test prediction does not change the choice."""
    for seed in range(2):
        write_run(tmp_path, "full_ft", seed, 2.0, lr=1e-3, label="full_ft lr=0.001", val_signal=0.2)
        write_run(tmp_path, "full_ft", seed, 0.2, lr=1e-4, label="full_ft lr=0.0001", val_signal=2.0)
        write_run(tmp_path, "lora_c", seed, 1.0)
    r = build_reports(tmp_path, select_on="val")
    sel = r.selection.set_index("method")
    assert sel.loc["full_ft", "chosen"] == "full_ft lr=0.0001" and sel.loc["full_ft", "n_configs"] == 2
    assert sel.loc["lora_c", "n_configs"] == 1
    assert set(r.summary["method"]) == {"full_ft lr=0.0001", "lora_c"}
    assert (tmp_path / "tables" / "selection.md").read_text().count("full_ft lr=0.0001") >= 1

    from benchmarks.report import load_records, runs_frame
    records = load_records(tmp_path)
    before = select_on_validation(runs_frame(records), records)[1]
    for rec in records:                                     # any test result at all
        rec["metrics"]["test"] = {k: (1.0 if "0.0001" in rec["label"] else 0.0) for k in ("auc", "acc")}
        rec.pop("predictions", None)
    after = select_on_validation(runs_frame(records), records)[1]
    pd.testing.assert_frame_equal(before, after)


def test_a_configuration_with_fewer_seeds_does_not_compete_until_its_seeds_are_in(tmp_path: Path) -> None:
    """A partly filled grid: lr=1e-4 is far better on validation but has one seed against lr=1e-3's three. It is
    listed as not eligible, and the table keeps the three-seed row; once its seeds are in, it wins."""
    for seed in range(3):
        write_run(tmp_path, "full_ft", seed, 1.0, lr=1e-3, label="full_ft lr=0.001", val_signal=0.3)
    write_run(tmp_path, "full_ft", 0, 1.0, lr=1e-4, label="full_ft lr=0.0001", val_signal=3.0)
    r = build_reports(tmp_path, select_on="val")
    row = r.selection.set_index("method").loc["full_ft"]
    assert row["chosen"] == "full_ft lr=0.001" and row["n_configs"] == 2
    assert "full_ft lr=0.0001: " in row["tried"] and "(1 seed(s), not eligible: fewer than 3)" in row["tried"]
    assert "full_ft lr=0.001: " in row["tried"] and "(3 seed(s))" in row["tried"]
    assert r.summary.set_index("method").loc["full_ft lr=0.001", "n_seeds"] == 3
    for seed in (1, 2):
        write_run(tmp_path, "full_ft", seed, 1.0, lr=1e-4, label="full_ft lr=0.0001", val_signal=3.0)
    r = build_reports(tmp_path, select_on="val")
    row = r.selection.set_index("method").loc["full_ft"]
    assert row["chosen"] == "full_ft lr=0.0001" and "not eligible" not in row["tried"]


def test_a_loss_is_a_variant_chosen_and_compared_apart_from_the_plain_runs(tmp_path: Path) -> None:
    """Weighted-CE runs beside plain ones (two sweeps, as run_all.sh makes them): the learning rate is chosen on
    validation within each loss, never across them, and each variant is compared with full_ft trained the same
    way; a method with plain runs only with the plain full_ft, and full_ft weighted with the plain full_ft."""
    for seed in range(2):
        for loss, better_lr in (("ce", 1e-3), ("weighted_ce", 1e-4)):
            for lr in (1e-3, 1e-4):
                write_run(tmp_path, "full_ft", seed, 1.0, lr=lr, loss=loss, label=f"full_ft lr={lr:g}",
                          val_signal=2.0 if lr == better_lr else 0.3)
            write_run(tmp_path, "lora_c", seed, 1.2, loss=loss, label="lora_c")
        write_run(tmp_path, "bitfit", seed, 0.8, label="bitfit")
    r = build_reports(tmp_path, select_on="val")
    sel = r.selection.set_index(["method", "variant"])
    assert sorted(sel.index) == [("bitfit", ""), ("full_ft", "loss=ce"), ("full_ft", "loss=weighted_ce"),
                                 ("lora_c", "loss=ce"), ("lora_c", "loss=weighted_ce")]
    assert sel.loc[("full_ft", "loss=ce"), "chosen"] == "full_ft lr=0.001 loss=ce"
    assert sel.loc[("full_ft", "loss=weighted_ce"), "chosen"] == "full_ft lr=0.0001 loss=weighted_ce"
    assert sel.loc[("full_ft", "loss=ce"), "n_configs"] == 2
    reference = r.paired.set_index("method")["reference"].to_dict()
    assert reference == {"lora_c loss=weighted_ce": "full_ft lr=0.0001 loss=weighted_ce",
                         "lora_c loss=ce": "full_ft lr=0.001 loss=ce", "bitfit": "full_ft lr=0.001 loss=ce",
                         "full_ft lr=0.0001 loss=weighted_ce": "full_ft lr=0.001 loss=ce"}
    assert r.statistics.set_index("method")["reference"].to_dict() == reference


def test_methods_that_train_on_validation_are_marked(tmp_path: Path) -> None:
    df = pd.DataFrame({"method": ["metalr", "metalr+lora_c", "lora_c", "not_a_method"],
                       "label": ["metalr", "metalr+lora_c", "lora_c", "x"]})
    assert mark_validation_trained(df)["label"].tolist() == [
        f"metalr{VALIDATION_MARK}", f"metalr+lora_c{VALIDATION_MARK}", "lora_c", "x"]
    write_run(tmp_path, "metalr", 0, 1.0)
    write_run(tmp_path, "full_ft", 0, 1.0)
    r = build_reports(tmp_path)
    for table in (r.summary, r.intervals, r.paired, r.clinical, r.efficiency):
        assert f"metalr{VALIDATION_MARK}" in set(table["method"])


def test_more_resamples_lower_the_holm_floor_and_too_few_are_refused(tmp_path: Path, capsys) -> None:
    from benchmarks import stats
    from benchmarks.uncertainty import holm_floor_text
    assert stats.smallest_bootstrap_p(2000) == 2 / 2001
    assert stats.holm_floor(2000, 49) == 49 * 2 / 2001 and stats.holm_floor(100, 200) == 1.0
    assert "49 comparisons; with 2000 resamples no p_bootstrap_holm can fall below 0.049" in holm_floor_text(2000, 49)
    assert "below 0.0049" in holm_floor_text(20000, 49) and holm_floor_text(2000, 0).endswith("across the table.")
    for seed in range(3):
        write_run(tmp_path, "full_ft", seed, 0.6)
        write_run(tmp_path, "lora_c", seed, 1.6)
    assert main([str(tmp_path), "--resamples", "4000"]) == 0
    paired = pd.read_csv(tmp_path / "tables" / "paired.csv").set_index("method")
    assert paired.loc["lora_c", "p_bootstrap"] == pytest.approx(2 / 4001)     # every resample above 0: the floor
    assert "4000 resamples" in (tmp_path / "tables" / "intervals.md").read_text()
    assert main([str(tmp_path), "--resamples", "500"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --resamples 500 is too few for a 95% percentile interval; pass at least 2000")
