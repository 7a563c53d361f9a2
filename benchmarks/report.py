"""Tables, statistics and plots, derived only from the run records in OUT/runs/*.json.

    python -m benchmarks.report OUT [--reference full_ft] [--metric auc]

Records come first and everything here is recomputed from them, so a table can always be rebuilt and never
drifts from the runs. Runs that did not finish are listed in the report, never silently dropped.

Statistical choices (also written into the report):
* Paired comparison vs the reference method over matching seeds: Wilcoxon signed-rank needs n >= 6 pairs to
  ever reach p < 0.05 (with 3 seeds its smallest two-sided p is 0.25), so below 6 pairs the paired t-test is
  used; with 3 seeds it has little power and assumes normal differences, so read it as a screen, not proof.
* 95% CIs: records hold per-seed metrics, not per-image predictions, so the bootstrap resamples the seeds'
  metric values (percentile method). This captures seed-to-seed variation only, not test-set sampling error,
  and with 3 seeds it is narrow and coarse; it is reported as descriptive.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

METRICS = ("acc", "auc", "balanced_acc", "macro_f1")
WILCOXON_MIN_PAIRS = 6
NOT_IN_GROUP = ("seed",)


@dataclass
class Reports:
    summary: pd.DataFrame
    efficiency: pd.DataFrame
    statistics: pd.DataFrame
    intervals: pd.DataFrame
    failed: pd.DataFrame
    summary_markdown: str
    plots: list[Path]


# ----------------------------------------------------------------------------------------------- loading
def load_records(out: Path) -> list[dict[str, Any]]:
    from benchmarks.store import load_record
    return [load_record(p) for p in sorted((Path(out) / "runs").glob("*.json"))]


def group_id(config: dict[str, Any]) -> str:
    """Runs that differ only in seed share a group: a method variant on a dataset."""
    rest = {k: v for k, v in config.items() if k not in NOT_IN_GROUP}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]


def runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished (status ok) run with its test metrics, sizes and speeds."""
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        test = (r.get("metrics") or {}).get("test") or {}
        params, eff = r.get("params") or {}, r.get("efficiency") or {}
        rows.append({
            "dataset": r["config"]["dataset"], "method": r["config"]["method"],
            "label": r.get("label") or r["config"]["method"], "group": group_id(r["config"]),
            "seed": r["config"]["seed"], **{m: test.get(m, np.nan) for m in METRICS},
            "trainable_params": params.get("trainable", np.nan), "percent_trainable": params.get("percent_trainable", np.nan),
            "total_params": params.get("total", np.nan), "adapter_bytes": r.get("adapter_bytes", np.nan),
            "peak_memory_bytes": eff.get("peak_memory_bytes", np.nan), "peak_memory_kind": eff.get("peak_memory_kind"),
            "train_images_per_s": eff.get("train_images_per_s", np.nan),
            "infer_images_per_s": eff.get("infer_images_per_s", np.nan),
            "epoch_time_s": eff.get("epoch_time_s", np.nan), "device": eff.get("device"),
            "best_epoch": r.get("best_epoch"), "epochs_run": r.get("epochs_run"),
        })
    df = pd.DataFrame(rows, columns=None if rows else ["dataset", "method", "label", "group", "seed", *METRICS])
    if not df.empty:
        # Two variants with the same label on one dataset (e.g. different epochs) must not be averaged together.
        clash = df.groupby(["dataset", "label"])["group"].transform("nunique") > 1
        df.loc[clash, "label"] = df.loc[clash, "label"] + " #" + df.loc[clash, "group"].str[:6]
    return df


def failed_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"run": r.get("run_name"), "status": r.get("status"), "reason": r.get("reason") or ""}
            for r in records if r.get("status") != "ok"]
    return pd.DataFrame(rows, columns=["run", "status", "reason"])


# ------------------------------------------------------------------------------------------------ tables
def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """mean and std over seeds per (dataset, method variant) for each test metric, plus the seed count."""
    if df.empty:
        return pd.DataFrame(columns=["dataset", "method", "n_seeds"])
    g = df.groupby(["dataset", "label"], sort=True)
    out = g[list(METRICS)].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out.insert(0, "n_seeds", g["seed"].nunique())
    return out.reset_index().rename(columns={"label": "method"})


def efficiency_table(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=["dataset", "method"])
    num = ["trainable_params", "percent_trainable", "adapter_bytes", "peak_memory_bytes",
           "train_images_per_s", "infer_images_per_s", "epoch_time_s"]
    g = df.groupby(["dataset", "label"], sort=True)
    out = g[num].mean()
    out["peak_memory_kind"] = g["peak_memory_kind"].first()
    out["device"] = g["device"].first()
    out["n_seeds"] = g["seed"].nunique()
    return out.reset_index().rename(columns={"label": "method"})


def statistics_table(df: pd.DataFrame, reference: str, metric: str) -> pd.DataFrame:
    """Each method variant vs the reference method on the same dataset, paired by seed."""
    from scipy import stats
    cols = ["dataset", "method", "reference", "metric", "n_pairs", "mean_diff", "test", "statistic", "p_value", "note"]
    rows = []
    for dataset, d in df.groupby("dataset"):
        ref = d[d["method"] == reference]
        if ref.empty:
            continue
        ref_label = ref.groupby("label")["seed"].nunique().idxmax()   # the reference variant with most seeds
        ref_by_seed = ref[ref["label"] == ref_label].set_index("seed")[metric]
        for label, m in d[d["label"] != ref_label].groupby("label"):
            paired = pd.concat([m.set_index("seed")[metric], ref_by_seed], axis=1, join="inner").dropna()
            n = len(paired)
            diff = paired.iloc[:, 0] - paired.iloc[:, 1]
            row = {"dataset": dataset, "method": label, "reference": ref_label, "metric": metric, "n_pairs": n,
                   "mean_diff": diff.mean() if n else np.nan, "statistic": np.nan, "p_value": np.nan}
            if n >= WILCOXON_MIN_PAIRS:
                res = stats.wilcoxon(paired.iloc[:, 0], paired.iloc[:, 1])
                row.update(test="Wilcoxon signed-rank", statistic=res.statistic, p_value=res.pvalue, note="")
            elif n >= 2:
                res = stats.ttest_rel(paired.iloc[:, 0], paired.iloc[:, 1])
                row.update(test="paired t-test", statistic=res.statistic, p_value=res.pvalue,
                           note=f"only {n} seed pairs: low power, assumes normal differences")
            else:
                row.update(test="none", note=f"{n} matching seed(s): no test possible")
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def interval_table(df: pd.DataFrame, n_resamples: int = 2000) -> pd.DataFrame:
    """Percentile-bootstrap 95% CI over the seeds' metric values (see module docstring for the caveat)."""
    from scipy import stats
    rows = []
    for (dataset, label), g in df.groupby(["dataset", "label"], sort=True):
        for metric in METRICS:
            values = g[metric].dropna().to_numpy(dtype=float)
            lo = hi = np.nan
            if len(values) >= 2 and np.ptp(values) > 0:
                res = stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=n_resamples,
                                      method="percentile", random_state=np.random.default_rng(0))
                lo, hi = res.confidence_interval.low, res.confidence_interval.high
            elif len(values) >= 1 and np.ptp(values) == 0:
                lo = hi = float(values[0])
            rows.append({"dataset": dataset, "method": label, "metric": metric, "n_seeds": len(values),
                         "mean": values.mean() if len(values) else np.nan, "ci95_low": lo, "ci95_high": hi,
                         "method_ci": "percentile bootstrap over seeds"})
    return pd.DataFrame(rows, columns=["dataset", "method", "metric", "n_seeds", "mean", "ci95_low", "ci95_high",
                                       "method_ci"])


# ------------------------------------------------------------------------------------------------ writing
def pretty_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """'0.861 ± 0.012' cells for Markdown/LaTeX; the CSV keeps separate numeric columns."""
    out = summary[["dataset", "method", "n_seeds"]].copy()
    for m in METRICS:
        if f"{m}_mean" in summary:
            out[m] = [_pm(a, s) for a, s in zip(summary[f"{m}_mean"], summary[f"{m}_std"])]
    return out


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub Markdown table (written here to avoid the optional 'tabulate' dependency)."""
    if df.empty:
        return "_(none)_"
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_table(df: pd.DataFrame, folder: Path, name: str, pretty: pd.DataFrame | None = None) -> None:
    df.to_csv(folder / f"{name}.csv", index=False)
    shown = df if pretty is None else pretty
    (folder / f"{name}.md").write_text(to_markdown(shown) + "\n")
    (folder / f"{name}.tex").write_text(shown.to_latex(index=False, float_format="%.4g", na_rep="--"))


def build_reports(out: Path, reference: str = "full_ft", metric: str = "auc") -> Reports:
    """Rebuild every table and plot of ``out`` from its records."""
    out = Path(out)
    records = load_records(out)
    df = runs_frame(records)
    tables_dir, plots_dir = out / "tables", out / "plots"
    tables_dir.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)

    summary, efficiency = summary_table(df), efficiency_table(df)
    statistics, intervals, failed = statistics_table(df, reference, metric), interval_table(df), failed_frame(records)
    pretty = pretty_summary(summary)
    write_table(summary, tables_dir, "summary", pretty)
    write_table(efficiency, tables_dir, "efficiency")
    write_table(statistics, tables_dir, "statistics")
    write_table(intervals, tables_dir, "intervals")
    failed.to_csv(tables_dir / "failed.csv", index=False)

    summary_md = "## Test metrics (mean ± std over seeds)\n\n" + to_markdown(pretty)
    report = [
        "# Benchmark report", f"Built from {len(records)} record(s) in {out / 'runs'}; {len(df)} finished.", "",
        summary_md, "", "## Efficiency", "", to_markdown(efficiency), "",
        f"## Statistics: each method vs {reference} on test {metric}, paired by seed", "",
        f"Wilcoxon signed-rank when >= {WILCOXON_MIN_PAIRS} seed pairs; otherwise the paired t-test (with 3 seeds "
        "Wilcoxon's smallest two-sided p is 0.25). Few pairs means low power: a large p is not evidence of no "
        "difference.", "", to_markdown(statistics) if not statistics.empty else
        f"_(no {reference} runs to compare against)_", "",
        "## Bootstrap 95% CIs", "",
        "Percentile bootstrap of the mean over the seeds' metric values (records keep per-seed metrics, not "
        "per-image predictions): seed variation only, coarse with few seeds.", "", to_markdown(intervals), "",
        "## Runs not finished (failed / interrupted)", "", to_markdown(failed), "",
    ]
    (tables_dir / "report.md").write_text("\n".join(report))
    plots = make_plots(df, records, plots_dir)
    return Reports(summary, efficiency, statistics, intervals, failed, summary_md + "\n\n" +
                   (f"failed/unfinished runs: {len(failed)} (see tables/report.md)" if len(failed) else ""), plots)


# ------------------------------------------------------------------------------------------------- plots
def make_plots(df: pd.DataFrame, records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """All PNG plots; each is skipped only when its data is absent (no finished runs, no trainer history)."""
    import matplotlib
    matplotlib.use("Agg")  # headless: sweeps run on servers
    written: list[Path] = []
    if not df.empty:
        for metric in ("auc", "acc"):
            written.append(_plot_vs_params(df, metric, folder / f"{metric}_vs_params.png"))
            written.append(_plot_bars(df, metric, folder / f"{metric}_bars.png"))
    history = history_frame(records, df)
    if not history.empty:
        written.append(_plot_curves(history, folder / "training_curves.png"))
    written += _plot_trainer_state(records, folder)
    return written


def history_frame(records: list[dict[str, Any]], df: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch rows (val AUC, train loss) of finished runs, labelled like the tables."""
    labels = {} if df.empty else dict(zip(zip(df["dataset"], df["seed"], df["group"]), df["label"]))
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        c = r["config"]
        label = labels.get((c["dataset"], c["seed"], group_id(c)), r.get("label"))
        for h in r.get("history") or []:
            rows.append({"dataset": c["dataset"], "method": label, "seed": c["seed"], "epoch": h.get("epoch"),
                         "val_auc": h.get("val_auc"), "train_loss": h.get("train_loss")})
    return pd.DataFrame(rows)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_vs_params(df: pd.DataFrame, metric: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns
    datasets = sorted(df["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    agg = df.groupby(["dataset", "label"]).agg(x=("trainable_params", "mean"), y=(metric, "mean"),
                                               err=(metric, "std")).reset_index()
    colors = dict(zip(sorted(df["label"].unique()), sns.color_palette("tab10", df["label"].nunique())))
    for ax, dataset in zip(axes[0], datasets):
        for row in agg[agg["dataset"] == dataset].itertuples():
            ax.errorbar(row.x, row.y, yerr=0 if pd.isna(row.err) else row.err, fmt="o", capsize=3,
                        color=colors[row.label], label=row.label)
        ax.set_xscale("log")
        ax.set(title=dataset, xlabel="trainable parameters (log)", ylabel=f"test {metric.upper()}")
    axes[0][-1].legend(fontsize=7, loc="best")
    return _save(fig, path)


def _plot_bars(df: pd.DataFrame, metric: str, path: Path) -> Path:
    import seaborn as sns
    grid = sns.catplot(data=df, x="label", y=metric, col="dataset", kind="bar", errorbar="sd", alpha=0.6,
                       height=3.5, aspect=1.3, sharey=False)
    for ax, dataset in zip(grid.axes.flat, grid.col_names):
        sns.stripplot(data=df[df["dataset"] == dataset], x="label", y=metric, ax=ax, color="black", size=4,
                      order=[t.get_text() for t in ax.get_xticklabels()])
        ax.tick_params(axis="x", rotation=45)
        ax.set(xlabel="", ylabel=f"test {metric.upper()}")
    return _save(grid.figure, path)


def _plot_curves(history: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns
    datasets = sorted(history["dataset"].unique())
    fig, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 7), squeeze=False)
    for j, dataset in enumerate(datasets):
        h = history[history["dataset"] == dataset]
        for i, col in enumerate(("val_auc", "train_loss")):
            sns.lineplot(data=h, x="epoch", y=col, hue="method", errorbar="sd", marker="o", ax=axes[i][j],
                         legend=(i == 0 and j == len(datasets) - 1))
            axes[i][j].set(title=dataset if i == 0 else "", ylabel=col.replace("_", " "))
    return _save(fig, path)


def _numeric_leaves(value: Any, prefix: str = "") -> dict[str, float]:
    """Flatten the engine's per-epoch trainer state (e.g. learned rates per layer group) to name -> number."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(_numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, (list, tuple)):
        out = {}
        for i, v in enumerate(value):
            out.update(_numeric_leaves(v, f"{prefix}[{i}]"))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def _plot_trainer_state(records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Per-epoch trainer state (MetaLR's learned rate per layer group), one plot per method x dataset, seed 0 first."""
    import matplotlib.pyplot as plt
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        for h in r.get("history") or []:
            for name, v in _numeric_leaves(h.get("trainer") or {}).items():
                rows.append({"dataset": r["config"]["dataset"], "method": r.get("label") or r["config"]["method"],
                             "seed": r["config"]["seed"], "epoch": h.get("epoch"), "series": name, "value": v})
    if not rows:
        return []
    data = pd.DataFrame(rows)
    written = []
    for (dataset, method), g in data.groupby(["dataset", "method"]):
        g = g[g["seed"] == g["seed"].min()]
        fig, ax = plt.subplots(figsize=(7, 4))
        for series, s in g.groupby("series"):
            ax.plot(s["epoch"], s["value"], marker=".", label=series)
        positive = (g["value"] > 0).all()
        if positive and g["value"].max() / max(g["value"].min(), 1e-30) > 100:
            ax.set_yscale("log")
        ax.set(title=f"{method} on {dataset} (seed {g['seed'].min()}): trainer state per epoch", xlabel="epoch")
        ax.legend(fontsize=6, ncol=2)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{dataset}__{method}")
        written.append(_save(fig, folder / f"trainer__{safe}.png"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder of a sweep (holds runs/*.json)")
    parser.add_argument("--reference", default="full_ft", help="reference method for the paired tests")
    parser.add_argument("--metric", default="auc", choices=METRICS, help="metric compared in the paired tests")
    args = parser.parse_args(argv)
    if not (args.out / "runs").is_dir():
        print(f"error: {args.out / 'runs'} does not exist; pass the --out folder of a sweep", file=sys.stderr)
        return 2
    from benchmarks.store import StoreError
    try:
        reports = build_reports(args.out, args.reference, args.metric)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(reports.summary_markdown)
    print(f"tables: {args.out / 'tables'}  plots: {args.out / 'plots'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
