"""Reports from synthetic records: numbers, failed runs, file formats, plots, statistics test named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import report
from benchmarks.config import RunConfig
from benchmarks.report import build_reports, main
from benchmarks.store import StoreError, atomic_write_json

AUCS = {"full_ft": [0.80, 0.82, 0.84], "lora_c": [0.70, 0.75, 0.77]}


def write_record(out: Path, method: str, seed: int, auc: float, status: str = "ok", label: str | None = None,
                 runtime: dict | None = None, trainer: dict | None = None) -> Path:
    config = RunConfig(method=method, dataset="breastmnist", seed=seed)
    test = {"acc": auc - 0.1, "auc": auc, "balanced_acc": auc - 0.2, "macro_f1": auc - 0.3}
    record = {"run_name": config.run_name, "key": config.key(), "label": label or method, "config": config.to_dict(),
              "status": status, "reason": None if status == "ok" else "RuntimeError: out of memory",
              "runtime": runtime or {"device": "cpu"}}
    if status == "ok":
        record.update(metrics={"test": test, "val": test}, params={"total": 1000, "trainable": 100 if method == "full_ft" else 10,
                      "percent_trainable": 1.0}, adapter_bytes=40,
                      efficiency={"peak_memory_bytes": 1e6, "peak_memory_kind": "rss", "train_images_per_s": 50.0,
                                  "infer_images_per_s": 150.0, "epoch_time_s": 2.0, "device": "cpu"},
                      history=[{"epoch": e, "train_loss": 1 / (e + 1), "val_auc": auc - 0.05 / (e + 1),
                                "trainer": trainer if trainer is not None else
                                {"rates": {"stem": 1e-4 * (e + 1), "fc": 1e-3}}} for e in range(3)])
    path = out / "runs" / f"{config.run_name}.json"
    atomic_write_json(path, record)
    return path


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
    # issue 11: intervals come from per-image predictions; these records have none, so no interval is made up
    ci = reports.intervals.query("method == 'full_ft' and metric == 'auc'").iloc[0]
    assert np.isclose(ci["mean"], np.mean(AUCS["full_ft"])) and np.isnan(ci["ci95_low"])
    assert ci["interval"] == "no predictions"

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


def test_wilcoxon_with_six_seed_pairs_and_zero_differences_do_not_crash(tmp_path) -> None:
    for seed in range(6):
        write_record(tmp_path, "full_ft", seed, 0.80 + 0.01 * seed)
        write_record(tmp_path, "lora_c", seed, 0.70 + 0.012 * seed)     # lower on every seed
        write_record(tmp_path, "bitfit", seed, 0.80 + 0.01 * seed)      # identical to the reference
    stats = report.statistics_table(report.runs_frame(report.load_records(tmp_path)), "full_ft", "auc")
    stats = stats.set_index("method")
    lora = stats.loc["lora_c"]
    assert lora["test"] == "Wilcoxon signed-rank" and lora["n_pairs"] == 6
    assert lora["p_value"] == pytest.approx(0.03125) and lora["note"] == ""   # exact two-sided p of 6/6 one way
    same = stats.loc["bitfit"]
    assert same["test"] == "none" and "all 6 paired differences are 0" in same["note"] and np.isnan(same["p_value"])


def test_zero_differences_with_three_seeds_do_not_crash(tmp_path) -> None:
    for seed in range(3):
        write_record(tmp_path, "full_ft", seed, 0.8)
        write_record(tmp_path, "bitfit", seed, 0.8)
    row = report.statistics_table(report.runs_frame(report.load_records(tmp_path)), "full_ft", "auc").iloc[0]
    assert row["test"] == "none" and row["mean_diff"] == 0


def test_cpu_and_gpu_runs_of_one_config_are_kept_apart(tmp_path) -> None:
    gpu = {"device": "cuda", "precision": "bfloat16-autocast"}
    for seed in range(2):
        write_record(tmp_path / "cpu", "full_ft", seed, 0.80)          # an old record: no precision -> cpu fp32
        write_record(tmp_path / "gpu", "full_ft", seed + 2, 0.90, runtime=gpu)
    df = report.runs_frame(report.load_records([tmp_path / "cpu", tmp_path / "gpu"]))
    summary = report.summary_table(df).set_index("method")
    assert summary.loc["full_ft [cpu fp32]", "auc_mean"] == pytest.approx(0.80)
    assert summary.loc["full_ft [cuda bfloat16-autocast]", "auc_mean"] == pytest.approx(0.90)


def test_several_folders_merge_into_to_and_conflicts_name_both_files(tmp_path, capsys) -> None:
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    for seed, auc in enumerate(AUCS["full_ft"]):
        write_record(a if seed < 2 else b, "full_ft", seed, auc)
    shared_a = write_record(a, "lora_c", 0, 0.7)
    write_record(b, "lora_c", 0, 0.7)                                    # the same run copied: kept once
    assert main([str(a), str(b), "--to", str(merged), "--reference", "full_ft"]) == 0
    summary = pd.read_csv(merged / "tables" / "summary.csv").set_index("method")
    assert summary.loc["full_ft", "n_seeds"] == 3 and summary.loc["lora_c", "n_seeds"] == 1
    assert (merged / "tables" / "report.md").exists() and not (a / "tables").exists() and not (b / "tables").exists()
    assert main([str(a), str(b)]) == 2 and "--to DIR" in capsys.readouterr().err

    shared_b = write_record(b, "lora_c", 0, 0.75)                        # same key, different record
    assert main([str(a), str(b), "--to", str(merged)]) == 2
    err = capsys.readouterr().err
    assert str(shared_a) in err and str(shared_b) in err and err.count("\n") == 1
    with pytest.raises(StoreError):
        report.load_records([a, b])


def test_trainer_plot_shows_only_rates_one_colour_per_group(tmp_path, monkeypatch) -> None:
    groups = ["stem", *[f"blocks.{i}.0" for i in range(12)], "neck", "head"]      # more groups than tab10 has
    trainer = {"rates": {g: 1e-4 * (1 + i) for i, g in enumerate(groups)}, "steps": 500}
    write_record(tmp_path, "metalr", 0, 0.8, trainer=trainer)
    write_record(tmp_path, "lora_c", 0, 0.8, trainer={"steps": 500})            # a counter only: no plot
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append((fig, path)) or path)
    written = report._plot_trainer_state(report.load_records(tmp_path), tmp_path)
    assert [p.name for _, p in figures] == ["trainer__breastmnist__metalr.png"] and len(written) == 1
    ax = figures[0][0].axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == groups                       # stem -> head, no "steps"
    assert len({tuple(line.get_color()) for line in lines}) == len(groups)
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "learning rate"
    assert max(max(line.get_ydata()) for line in lines) < 1                     # the step counter is not drawn


def test_rate_leaves_and_forward_order() -> None:
    assert report.rate_leaves({"rates": {"a": 1.0}, "steps": 3, "inner": {"head_lr": 0.1, "count": 2}}) == \
        {"a": 1.0, "inner.head_lr": 0.1}
    assert report.forward_order(["head", "blocks.10.0", "neck", "blocks.2.1", "stem", "layer1.0"]) == \
        ["stem", "blocks.2.1", "blocks.10.0", "layer1.0", "neck", "head"]


def test_figure_legend_lists_methods_missing_from_some_panels() -> None:
    """A method run on one dataset only still appears in the (single, figure-level) legend, with one colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.report import _figure_legend, _palette
    colors = _palette(["lora_c", "full_ft"])
    fig, axes = plt.subplots(1, 2)
    axes[0].plot([0, 1], [0, 1], color=colors["lora_c"], label="lora_c")
    axes[1].plot([0, 1], [1, 0], color=colors["full_ft"], label="full_ft")
    axes[1].legend()
    _figure_legend(fig, axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["lora_c", "full_ft"]
    assert axes[1].get_legend() is None
    plt.close(fig)


def test_provenance_counts_a_resumed_run_under_every_process_origin(tmp_path) -> None:
    """A run resumed at another commit and on another host (``efficiency.processes``) counts under both commits and
    both hosts, and as dirty when one of its processes was; a record without process entries keeps its environment."""
    from benchmarks.provenance import record_origins
    env = {"device_name": "cpu (AMD EPYC)", "git": {"commit": "b" * 40, "dirty": False}}
    processes = [{"commit": "a" * 40, "dirty": True, "host": "cpu (Intel Xeon)", "from_epoch": 0},
                 {"commit": "b" * 40, "dirty": False, "host": "cpu (AMD EPYC)", "from_epoch": 40},
                 {"commit": "b" * 40, "dirty": False, "host": "cpu (AMD EPYC)", "from_epoch": 70}]
    for seed, procs in ((0, processes), (1, None)):
        path = write_record(tmp_path, "full_ft", seed, 0.8)
        record = json.loads(path.read_text())
        record["environment"] = env
        if procs is not None:
            record["efficiency"]["processes"] = procs
        atomic_write_json(path, record)
    assert record_origins(record) == [("bbbbbbb", False, "cpu (AMD EPYC)")]
    row = build_reports(tmp_path).provenance.set_index("method").loc["full_ft"]
    assert (row["n_runs"], row["commits"], row["dirty_runs"]) == (2, "bbbbbbb x2, aaaaaaa x1", 1)
    assert row["hosts"] == "cpu (AMD EPYC) x2, cpu (Intel Xeon) x1"


def test_palette_never_repeats_a_colour() -> None:
    from benchmarks.report import _palette
    colors = list(_palette([f"method_{i}" for i in range(14)]).values())
    assert len({tuple(round(c, 6) for c in color) for color in colors}) == 14


def test_provenance_names_each_rows_commits_dirty_runs_and_hosts(tmp_path) -> None:
    """A row whose seeds span two commits (one on a dirty tree) and two hosts says so; a record made outside git
    reads 'unknown' rather than vanishing from the count."""
    origins = {("full_ft", 0): ("a" * 40, False, "cpu (AMD EPYC)"), ("full_ft", 1): ("a" * 40, False, "cpu (AMD EPYC)"),
               ("full_ft", 2): ("b" * 40, True, "cpu (Intel Xeon)"), ("lora_c", 0): (None, None, "cpu (AMD EPYC)")}
    for (method, seed), (commit, dirty, host) in origins.items():
        path = write_record(tmp_path, method, seed, 0.8 + seed / 100)
        record = json.loads(path.read_text())
        record["environment"] = {"device_name": host, "git": {"commit": commit, "dirty": dirty}}
        atomic_write_json(path, record)
    reports = build_reports(tmp_path)

    rows = reports.provenance.set_index("method")
    assert rows.loc["full_ft", "n_runs"] == 3 and rows.loc["full_ft", "dirty_runs"] == 1
    assert rows.loc["full_ft", "commits"] == "aaaaaaa x2, bbbbbbb x1"
    assert rows.loc["full_ft", "hosts"] == "cpu (AMD EPYC) x2, cpu (Intel Xeon) x1"
    assert rows.loc["lora_c", "commits"] == "unknown x1" and rows.loc["lora_c", "dirty_runs"] == 0
    text = (tmp_path / "tables" / "report.md").read_text()
    assert "## Where the records come from" in text and "aaaaaaa x2, bbbbbbb x1" in text
    assert (tmp_path / "tables" / "provenance.csv").stat().st_size > 0
