"""Reports from synthetic records: numbers, failed runs, file formats, plots, statistics test named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.config import RunConfig
from benchmarks.report import build_reports, main
from benchmarks.store import atomic_write_json

AUCS = {"full_ft": [0.80, 0.82, 0.84], "lora_c": [0.70, 0.75, 0.77]}


def write_record(out: Path, method: str, seed: int, auc: float, status: str = "ok", label: str | None = None) -> None:
    config = RunConfig(method=method, dataset="breastmnist", seed=seed)
    test = {"acc": auc - 0.1, "auc": auc, "balanced_acc": auc - 0.2, "macro_f1": auc - 0.3}
    record = {"run_name": config.run_name, "key": config.key(), "label": label or method, "config": config.to_dict(),
              "status": status, "reason": None if status == "ok" else "RuntimeError: out of memory"}
    if status == "ok":
        record.update(metrics={"test": test, "val": test}, params={"total": 1000, "trainable": 100 if method == "full_ft" else 10,
                      "percent_trainable": 1.0}, adapter_bytes=40,
                      efficiency={"peak_memory_bytes": 1e6, "peak_memory_kind": "rss", "train_images_per_s": 50.0,
                                  "infer_images_per_s": 150.0, "epoch_time_s": 2.0, "device": "cpu"},
                      history=[{"epoch": e, "train_loss": 1 / (e + 1), "val_auc": auc - 0.05 / (e + 1),
                                "trainer": {"rates": {"stem": 1e-4 * (e + 1), "fc": 1e-3}}} for e in range(3)])
    atomic_write_json(out / "runs" / f"{config.run_name}.json", record)


def test_tables_statistics_failed_and_plots(tmp_path) -> None:
    for method, aucs in AUCS.items():
        for seed, auc in enumerate(aucs):
            write_record(tmp_path, method, seed, auc, label="lora_c[rank=8]" if method == "lora_c" else None)
    write_record(tmp_path, "bitfit", 0, 0.0, status="failed")
    reports = build_reports(tmp_path, reference="full_ft", metric="auc")

    summary = pd.read_csv(tmp_path / "tables" / "summary.csv").set_index("method")
    assert summary.loc["lora_c[rank=8]", "auc_mean"] == np.mean(AUCS["lora_c"])
    assert np.isclose(summary.loc["full_ft", "auc_std"], np.std(AUCS["full_ft"], ddof=1))
    assert summary.loc["full_ft", "n_seeds"] == 3 and "bitfit" not in summary.index
    for name in ("summary", "efficiency", "statistics", "intervals"):
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / "tables" / f"{name}.{ext}").stat().st_size > 0
    assert "\\begin{tabular}" in (tmp_path / "tables" / "summary.tex").read_text()
    assert "0.740 ± 0.036" in (tmp_path / "tables" / "summary.md").read_text()

    stats = reports.statistics.iloc[0]
    assert stats["test"] == "paired t-test" and stats["n_pairs"] == 3 and "low power" in stats["note"]
    assert np.isclose(stats["mean_diff"], np.mean(np.subtract(AUCS["lora_c"], AUCS["full_ft"])))
    ci = reports.intervals.query("method == 'full_ft' and metric == 'auc'").iloc[0]
    assert 0.80 <= ci["ci95_low"] <= ci["mean"] <= ci["ci95_high"] <= 0.84

    report = (tmp_path / "tables" / "report.md").read_text()
    assert "bitfit" in report and "out of memory" in report and "paired t-test" in report
    plots = {p.name: p for p in (tmp_path / "plots").glob("*.png")}
    assert {"auc_vs_params.png", "acc_vs_params.png", "auc_bars.png", "training_curves.png"} <= set(plots)
    assert any(name.startswith("trainer__") for name in plots)
    for p in plots.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_cli_rebuilds_from_records_and_rejects_missing_folder(tmp_path, capsys) -> None:
    write_record(tmp_path, "full_ft", 0, 0.8)
    assert main([str(tmp_path), "--metric", "acc"]) == 0
    assert "full_ft" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 2
