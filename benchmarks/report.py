"""Tables, statistics and plots, derived only from the run records in OUT/runs/*.json.

    python -m benchmarks.report OUT [OUT2 ...] [--to DIR] [--reference full_ft] [--metric auc] [--select-on val]

Records come first and everything here is recomputed from them, so a table can always be rebuilt and never
drifts from the runs. Runs that did not finish are listed in the report, never silently dropped. Several
output folders (e.g. one per machine) are merged: a run recorded in two of them must have the same outcome
(metrics, history, config: timings may differ; else it is an error naming both files). Runs of one configuration
made on different devices or with different arithmetic (CPU fp32 vs CUDA bf16 autocast, from each record's ``runtime.precision``) are kept apart:
their labels get a ``[device precision]`` suffix and they are never averaged together or paired.

Statistical choices (also written into the report):
* 95% intervals and paired differences come from each run's per-image predictions (:mod:`benchmarks.stats`):
  a bootstrap over seeds and test images, and for binary AUC DeLong's test; p-values are Holm-adjusted across
  each table. Records without predictions (written before they were kept) are shown as "no predictions".
* The seed-level table compares per-seed metrics only: Wilcoxon signed-rank needs n >= 6 pairs to ever reach
  p < 0.05 (with 3 seeds its smallest two-sided p is 0.25), so below 6 pairs the paired t-test is used; it
  ignores test-set sampling error and has little power with 3 seeds (Holm-adjusted too): a screen, not proof.
* ``--select-on val`` keeps per method variant the learning rate with the best mean validation score
  (:mod:`benchmarks.selection`; a loss or a rank is a variant, :mod:`benchmarks.variants`); methods that train
  on the validation split are marked in every table. Each variant is compared with the reference trained the
  same way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from benchmarks import plotting
from benchmarks.config import SELECT_ON

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
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    clinical: pd.DataFrame = field(default_factory=pd.DataFrame)
    selection: pd.DataFrame = field(default_factory=pd.DataFrame)
    problems: list[str] = field(default_factory=list)
    provenance: pd.DataFrame = field(default_factory=pd.DataFrame)


# ----------------------------------------------------------------------------------------------- loading
def load_records(outs: Path | Sequence[Path]) -> list[dict[str, Any]]:
    """The records of one or several output folders (their ``runs/*.json``), merged by run key.

    A run present in two folders is kept once (the first folder's record) when both have the same ``outcome``
    (timings may differ); different outcomes of one run raise ``StoreError`` naming both files (keep the one
    you mean, or pass only one of the folders).
    """
    from benchmarks.records import StoreError, load_folder
    folders = [Path(outs)] if isinstance(outs, (str, Path)) else [Path(o) for o in outs]
    by_key: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder in folders:
        for path, record in load_folder(folder / "runs"):
            key = str(record.get("key") or record.get("run_name") or path.stem)
            if key in by_key:
                first, kept = by_key[key]
                if outcome(kept) != outcome(record):
                    raise StoreError(f"run {key} is recorded differently in {first} and {path}{_threads(kept, record)}"
                                     f"; keep one of the two files (or pass only one of the folders)")
                continue
            by_key[key] = (path, record)
    return [record for _, record in sorted(by_key.values(), key=lambda item: item[0].name)]


# Parts of a record that differ between two executions of one run key even when its results are identical.
TIMING_FIELDS = ("started_at", "finished_at", "runner_wall_time_s", "wall_time_s", "efficiency", "runtime",
                 "environment", "traceback")


def outcome(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its timings and process facts (``TIMING_FIELDS``, each epoch's ``epoch_time_s``): two
    records of one run with the same outcome are the same run, e.g. a folder copied to another machine and rerun
    there with the same thread count."""
    out = {k: v for k, v in record.items() if k not in TIMING_FIELDS}
    if isinstance(out.get("history"), list):
        out["history"] = [{k: v for k, v in h.items() if k != "epoch_time_s"} if isinstance(h, dict) else h
                          for h in out["history"]]
    return out


def _threads(a: dict[str, Any], b: dict[str, Any]) -> str:
    """" (torch threads 2 vs 1: ...)" when the two records' thread counts differ (results depend on it)."""
    ta, tb = ((r.get("environment") or {}).get("torch_threads") for r in (a, b))
    return f" (torch threads {ta} vs {tb}: results depend on the thread count)" if ta != tb else ""


def group_id(config: dict[str, Any]) -> str:
    """Runs that differ only in seed share a group: a method variant on a dataset (a weights file counts by
    its content hash, not its path)."""
    rest = {k: v for k, v in config.items() if k not in NOT_IN_GROUP}
    if rest.get("weights_sha256"):
        rest.pop("weights", None)
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]


def run_setting(record: dict[str, Any]) -> str:
    """"cpu fp32", "cuda bfloat16-autocast": the device kind and arithmetic a run used (the report keeps them
    apart). Older CPU records get their fp32 from :func:`benchmarks.records.migrate`."""
    from benchmarks.records import run_device
    precision = (record.get("runtime") or {}).get("precision") or "precision unrecorded"
    return f"{run_device(record)} {precision}"


def record_metrics() -> tuple[str, ...]:
    """The metrics stored in each record (``acc``, ``auc``, ``balanced_acc``, ``macro_f1`` and any other
    registered with ``needs="record"``, :mod:`benchmarks.metric_registry`), in registration order."""
    import benchmarks.metrics  # noqa: F401  (registers the built-in record metrics)
    from benchmarks.metric_registry import names
    return names("record")


def _num(value: Any) -> float:
    """A record's number; ``null`` (how non-finite values are stored) and absent values read as NaN."""
    return np.nan if value is None else value


def runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished (status ok) run with its test metrics, sizes and speeds."""
    from benchmarks.variants import settings_json, variant_names
    rows, metrics = [], record_metrics()
    configs = {group_id(r["config"]): r["config"] for r in records if r.get("status") == "ok"}
    variants = variant_names(configs)
    for r in records:
        if r.get("status") != "ok":
            continue
        test = (r.get("metrics") or {}).get("test") or {}
        params, eff = r.get("params") or {}, r.get("efficiency") or {}
        rows.append({
            "run_name": r.get("run_name"), "dataset": r["config"]["dataset"], "method": r["config"]["method"],
            "label": r.get("label") or r["config"]["method"], "group": group_id(r["config"]),
            "variant": variants[group_id(r["config"])], "settings": settings_json(r["config"]),
            "setting": run_setting(r),
            "seed": r["config"]["seed"], **{m: _num(test.get(m)) for m in metrics},
            "trainable_params": _num(params.get("trainable")),
            "percent_trainable": _num(params.get("percent_trainable")),
            "total_params": _num(params.get("total")), "adapter_bytes": _num(r.get("adapter_bytes")),
            "peak_memory_bytes": _num(eff.get("peak_memory_bytes")), "peak_memory_kind": eff.get("peak_memory_kind"),
            "train_images_per_s": _num(eff.get("train_images_per_s")),
            "infer_images_per_s": _num(eff.get("infer_images_per_s")),
            "epoch_time_s": _num(eff.get("epoch_time_s")), "device": eff.get("device"),
            "best_epoch": r.get("best_epoch"), "epochs_run": r.get("epochs_run"),
            "backbone": r["config"].get("backbone"), "img_size": r["config"].get("img_size"),
            "epochs": r["config"].get("epochs"), "per_class_recall": test.get("per_class_recall"),
            "class_names": test.get("class_names"),
        })
    df = pd.DataFrame(rows, columns=None if rows else ["run_name", "dataset", "method", "label", "group", "variant",
                                                       "settings", "setting", "seed", *metrics])
    if not df.empty:
        # One configuration run on two devices / precisions: never averaged together.
        clash = df.groupby(["dataset", "label"])["setting"].transform("nunique") > 1
        df.loc[clash, "label"] = df.loc[clash, "label"] + " [" + df.loc[clash, "setting"] + "]"
        # Two variants with the same label on one dataset (e.g. different epochs) must not be averaged together:
        # each gets the settings that tell them apart ("lora_c epochs=12"), by benchmarks.labels.
        df["label"] = distinguish_clashes(df, configs)
    return df


def distinguish_clashes(df: pd.DataFrame, configs: dict[str, dict[str, Any]]) -> pd.Series:
    """``df["label"]`` where rows of one (dataset, label) that are different configurations (groups) get the
    settings that differ among them appended; the group hash only if nothing printable differs."""
    from benchmarks.labels import describe, differing_settings
    labels = df["label"].copy()
    for _, rows in df.groupby(["dataset", "label"]):
        groups = list(dict.fromkeys(rows["group"]))
        if len(groups) < 2:
            continue
        keys = differing_settings([configs[g] for g in groups])
        for g in groups:
            extra = describe(configs[g], keys) if keys else ""
            labels[rows.index[rows["group"] == g]] = rows["label"].iloc[0] + " " + (extra or "#" + g[:6])
    return labels


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
    out = g[list(record_metrics())].agg(["mean", "std"])
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
    out["setting"] = g["setting"].first()
    out["n_seeds"] = g["seed"].nunique()
    return out.reset_index().rename(columns={"label": "method"})


def statistics_table(df: pd.DataFrame, reference: str, metric: str) -> pd.DataFrame:
    """Each method variant vs the reference method's variant trained the same way (``benchmarks.variants``) on
    the same dataset and device / precision, paired by seed."""
    from scipy import stats
    cols = ["dataset", "method", "reference", "metric", "n_pairs", "mean_diff", "diff_ci95_low", "diff_ci95_high",
            "test", "statistic", "p_value", "p_holm", "note"]
    rows = []
    if df.empty:
        return pd.DataFrame(rows, columns=cols)
    from benchmarks.variants import reference_pairs
    for (dataset, _), d in df.groupby(["dataset", "setting"]):
        for label, m, ref_label in reference_pairs(d, reference):   # each with the reference trained the same way
            ref_by_seed = d[d["label"] == ref_label].set_index("seed")[metric]
            paired = pd.concat([m.set_index("seed")[metric], ref_by_seed], axis=1, join="inner").dropna()
            n = len(paired)
            diff = paired.iloc[:, 0] - paired.iloc[:, 1]
            row = {"dataset": dataset, "method": label, "reference": ref_label, "metric": metric, "n_pairs": n,
                   "mean_diff": diff.mean() if n else np.nan, "statistic": np.nan, "p_value": np.nan,
                   "diff_ci95_low": np.nan, "diff_ci95_high": np.nan}
            if n >= 2:   # t-interval of the mean seed-paired difference (seed variation only)
                half = stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n)
                row.update(diff_ci95_low=diff.mean() - half, diff_ci95_high=diff.mean() + half)
            if n >= 2 and bool((diff == 0).all()):   # both tests are undefined (scipy: error or nan)
                row.update(test="none", note=f"all {n} paired differences are 0: identical results, no test")
            elif n >= WILCOXON_MIN_PAIRS:
                res = stats.wilcoxon(paired.iloc[:, 0], paired.iloc[:, 1])
                row.update(test="Wilcoxon signed-rank", statistic=res.statistic, p_value=res.pvalue, note="")
            elif n >= 2:
                res = stats.ttest_rel(paired.iloc[:, 0], paired.iloc[:, 1])
                row.update(test="paired t-test", statistic=res.statistic, p_value=res.pvalue,
                           note=f"only {n} seed pairs: low power, assumes normal differences")
            else:
                row.update(test="none", note=f"{n} matching seed(s): no test possible")
            rows.append(row)
    from benchmarks.stats import holm
    out = pd.DataFrame(rows, columns=cols)
    out["p_holm"] = holm(out["p_value"].to_numpy(dtype=float)) if len(out) else []
    return out


# ------------------------------------------------------------------------------------------------ writing
def pretty_summary(summary: pd.DataFrame, majority: pd.DataFrame | None = None) -> pd.DataFrame:
    """'0.861 ± 0.012' cells for Markdown/LaTeX (the CSV keeps separate numeric columns): the settings that vary,
    trainable parameters, the metrics, per-class recall, and each dataset's majority-class (chance) row."""
    from benchmarks.table_extras import VARYING, count_text
    shown = ["dataset", "method", *[c for c in VARYING if c in summary], "n_seeds"]
    out = summary[shown].copy()
    if "trainable_params" in summary:
        out["trainable"] = [f"{count_text(n)} ({p:.2f} %)" if not pd.isna(p) else count_text(n)
                            for n, p in zip(summary["trainable_params"], summary["percent_trainable"])]
    metrics = record_metrics()
    for m in metrics:
        if f"{m}_mean" in summary:
            out[m] = [_pm(a, s) for a, s in zip(summary[f"{m}_mean"], summary[f"{m}_std"])]
    if "recall_per_class" in summary:
        out["recall per class"] = summary["recall_per_class"].fillna("–")
    if majority is not None and not majority.empty and not out.empty:
        chance = pd.DataFrame({"dataset": majority["dataset"], "method": majority["method"],
                               **{m: majority[m].map(_chance_text) for m in metrics if m in out},
                               **({"recall per class": majority["recall_per_class"]}
                                  if "recall per class" in out else {})})
        chance = chance[chance["dataset"].isin(out["dataset"])]
        out = pd.concat([out.astype(object), chance.astype(object)], ignore_index=True).fillna("")
        order = {d: i for i, d in enumerate(dict.fromkeys(out["dataset"]))}
        out = out.sort_values(by="dataset", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    return out


def _chance_text(value: Any) -> str:
    """A majority-class cell: ``0.731``; ``–`` for a metric that declares no chance value."""
    return "–" if pd.isna(value) else f"{value:.3f}"


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
            if np.isnan(v):
                return ""
            return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"   # 1,045,000, never 1.045e+06
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_table(df: pd.DataFrame, folder: Path, name: str, pretty: pd.DataFrame | None = None,
                title: str | None = None) -> None:
    """CSV (numbers), Markdown and LaTeX (``pretty`` if given); ``title`` heads the Markdown file (the method)."""
    df.to_csv(folder / f"{name}.csv", index=False)
    shown = df if pretty is None else pretty
    (folder / f"{name}.md").write_text((f"{title}\n\n" if title else "") + to_markdown(shown) + "\n")
    (folder / f"{name}.tex").write_text(shown.to_latex(index=False, float_format="%.4g", na_rep="--"))


PROVENANCE_TEXT = ("Per row of the tables above: the commits (short hash x runs) and hosts its runs were made at, and "
                   "how many ran on a tree with uncommitted source changes (dirty_runs); a run resumed at another "
                   "commit or on another host counts under each. What two commits change: "
                   "`git diff A B -- . ':!results'`.")


def build_reports(out: Path | Sequence[Path], reference: str = "full_ft", metric: str = "auc",
                  to: Path | None = None, select_on: str = "none", n_resamples: int | None = None) -> Reports:
    """Rebuild every table and plot from the records of ``out`` (one folder or several, merged) into ``to``
    (default: the one folder given). ``select_on="val"``: one learning rate per method variant, chosen on
    validation. A missing or corrupt predictions file is printed as one line (stderr) and listed in the report.
    ``n_resamples``: bootstrap resamples of the interval and paired tables (default ``stats.N_RESAMPLES``)."""
    from benchmarks import stats, uncertainty
    n_resamples = n_resamples or stats.N_RESAMPLES
    from benchmarks.selection import mark_validation_trained, select_on_validation
    outs = [Path(out)] if isinstance(out, (str, Path)) else [Path(o) for o in out]
    if to is None and len(outs) != 1:
        raise ValueError("several input folders need an output folder (to=...)")
    dest = Path(to) if to is not None else outs[0]
    records = load_records(outs)
    df = mark_validation_trained(runs_frame(records))
    selection = pd.DataFrame()
    if select_on == "val":
        df, selection = select_on_validation(df, records)
    preds = uncertainty.load_predictions(records, [o / "runs" for o in outs])
    for problem in preds.problems:
        print(f"warning: {problem}", file=sys.stderr)
    tables_dir, plots_dir = dest / "tables", dest / "plots"
    tables_dir.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)

    from benchmarks.table_extras import majority_table, pretty_efficiency, summary_columns
    summary, efficiency = summary_table(df), efficiency_table(df)
    if not summary.empty:   # trainable parameters, per-class recall, the settings that vary (table_extras)
        extras = summary_columns(df).rename(columns={"label": "method"})
        summary = summary.merge(extras, on=["dataset", "method"], how="left")
    statistics, failed = statistics_table(df, reference, metric), failed_frame(records)
    intervals = uncertainty.interval_table(df, preds, n_resamples)
    paired = uncertainty.paired_table(df, preds, reference, metric, n_resamples)
    clinical = uncertainty.clinical_table(df, preds)
    majority = majority_table(records)
    pretty = pretty_summary(summary, majority)
    write_table(summary, tables_dir, "summary", pretty)
    majority.to_csv(tables_dir / "majority.csv", index=False)
    pretty_eff = pretty_efficiency(efficiency)
    write_table(efficiency, tables_dir, "efficiency", pretty_eff)
    method_text = stats.method_text(n_resamples)
    write_table(statistics, tables_dir, "statistics", title=f"Seed-level: each method vs {reference} on test "
                f"{metric}, paired by seed (t-test below {WILCOXON_MIN_PAIRS} pairs, else Wilcoxon); p_holm: "
                "Holm-adjusted across the table. Per-seed metrics only: no test-set sampling error.")
    write_table(intervals, tables_dir, "intervals", uncertainty.pretty_intervals(intervals),
                title=f"Test metrics: mean over seeds [95% interval]; {method_text}. "
                      f"'{uncertainty.NO_PREDICTIONS}': the records kept no per-image predictions, so no interval.")
    holm_floor = uncertainty.holm_floor_text(n_resamples, int(pd.to_numeric(paired["p_bootstrap"]).notna().sum()))
    write_table(paired, tables_dir, "paired", title=f"Each method minus {reference} on test {metric}: paired "
                "bootstrap over test images with seeds matched (95% interval, p_bootstrap) and, for binary AUC, "
                f"DeLong's test (seeds fixed). {holm_floor}")
    write_table(clinical, tables_dir, "clinical", title="Clinical metrics on test, mean and std over seeds: AUPRC "
                "(average precision), ECE (15 bins), Brier; sensitivity / specificity at the Youden threshold "
                "chosen on validation; binary tasks: positive = class 1, as in MedMNIST's AUC (positive_class).")
    if select_on == "val":
        write_table(selection, tables_dir, "selection")
    failed.to_csv(tables_dir / "failed.csv", index=False)
    from benchmarks.provenance import provenance_table
    provenance = provenance_table(df, records)
    write_table(provenance, tables_dir, "provenance", title=PROVENANCE_TEXT)

    summary_md = "## Test metrics (mean ± std over seeds)\n\n" + to_markdown(pretty)
    from benchmarks.selection import VALIDATION_MARK
    with_preds = len(preds.by_run)
    report = [
        "# Benchmark report",
        f"Built from {len(records)} record(s) in {', '.join(str(o / 'runs') for o in outs)}; {len(df)} finished"
        f"{' (chosen configurations)' if select_on == 'val' else ''}, {with_preds} with per-image predictions "
        f"({len(preds.missing)} recorded before predictions were kept: {uncertainty.NO_PREDICTIONS}). "
        "Runs on different devices / precisions are separate rows (label suffix [device precision]). "
        f"Labels ending {VALIDATION_MARK!r} are methods that train on the validation split (MetaLR meta-trains its "
        "learning rates on it), so their checkpoint and configuration choice saw data they were trained on.", "",
        *([f"Predictions problems ({len(preds.problems)}; those runs are left out of the interval, paired and "
           "clinical tables):", "", *[f"- {p}" for p in preds.problems], ""] if preds.problems else []),
        *(["## Configuration chosen on validation", "",
           "Per method, the configuration with the best mean validation select_metric over seeds; test figures of "
           "the others are not reported.", "", to_markdown(selection), ""] if select_on == "val" else []),
        summary_md, "",
        "## Test metrics with 95% intervals (seeds and test images)", "",
        f"{method_text}. Point: mean over seeds.", "", to_markdown(uncertainty.pretty_intervals(intervals)), "",
        f"## Paired differences: each method minus {reference} on test {metric}, same images, seeds matched", "",
        "diff: mean over matched seeds; 95% interval and p_bootstrap from the paired bootstrap (seeds and test "
        "images drawn together for both); p_delong: DeLong's test of the mean AUC difference (binary AUC only; "
        f"test images only, seeds fixed). {holm_floor}", "",
        to_markdown(paired) if not paired.empty else f"_(no {reference} runs to compare against)_", "",
        "## Clinical metrics on test (mean and std over seeds)", "",
        "auprc: average precision (binary: positive class; else macro one-vs-rest); ece: expected calibration "
        "error, 15 equal-width bins of the top-label confidence; brier: binary mean (p1 - y)^2, multiclass sum "
        "over classes; sensitivity / specificity (binary; positive = class 1, as in MedMNIST's AUC, named in "
        "positive_class: for BreastMNIST that is normal/benign, so its specificity is the malignant recall): at the "
        "Youden threshold chosen on validation, applied unchanged to test.", "", to_markdown(clinical), "",
        "## Efficiency", "", to_markdown(pretty_eff), "",
        f"## Seed-level statistics: each method vs {reference} on test {metric}, paired by seed", "",
        f"Per-seed metrics only (no test-set sampling error). Wilcoxon signed-rank when >= {WILCOXON_MIN_PAIRS} "
        "seed pairs; otherwise the paired t-test (with 3 seeds Wilcoxon's smallest two-sided p is 0.25). p_holm: "
        "Holm-adjusted across this table; diff_ci95: t-interval of the mean paired difference over seeds. Few pairs "
        "means low power: a large p is not evidence of no difference.",
        "", to_markdown(statistics) if not statistics.empty else f"_(no {reference} runs to compare against)_", "",
        "## Where the records come from", "", PROVENANCE_TEXT, "", to_markdown(provenance), "",
        "## Runs not finished (failed / interrupted)", "", to_markdown(failed), "",
    ]
    (tables_dir / "report.md").write_text("\n".join(report))
    from benchmarks import curves, learned  # noqa: F401  (they register their figures)
    plots = plotting.draw_all(plotting.PlotInputs(df, records, plots_dir, preds, reference,
                                                  [o / "runs" for o in outs]))   # each skips absent data
    return Reports(summary, efficiency, statistics, intervals, failed, summary_md + "\n\n" +
                   (f"failed/unfinished runs: {len(failed)} (see tables/report.md)" if len(failed) else ""), plots,
                   paired, clinical, selection, preds.problems, provenance)


# ------------------------------------------------------------------------------------------------- plots
PLOTTED_METRICS = ("auc", "acc")   # the record metrics drawn per method (vs parameters, bars)


@plotting.register_plot("accuracy_vs_params")
def accuracy_vs_params(inputs: plotting.PlotInputs) -> list[Path]:
    """``{auc,acc}_vs_params.png``: test metric against trainable parameters (log), one panel per dataset."""
    if inputs.df.empty:
        return []
    return [_plot_vs_params(inputs.df, m, inputs.folder / f"{m}_vs_params.png") for m in PLOTTED_METRICS]


@plotting.register_plot("metric_bars")
def metric_bars(inputs: plotting.PlotInputs) -> list[Path]:
    """``{auc,acc}_bars.png``: mean over seeds with one dot per seed, one panel per dataset."""
    if inputs.df.empty:
        return []
    return [_plot_bars(inputs.df, m, inputs.folder / f"{m}_bars.png") for m in PLOTTED_METRICS]


@plotting.register_plot("training_curves")
def training_curves(inputs: plotting.PlotInputs) -> list[Path]:
    """``training_curves.png``: validation AUC and training loss per epoch; none without any history."""
    history = history_frame(inputs.records, inputs.df)
    return [] if history.empty else [_plot_curves(history, inputs.folder / "training_curves.png")]


@plotting.register_plot("trainer_state")
def trainer_state(inputs: plotting.PlotInputs) -> list[Path]:
    """``trainer__<dataset>__<method>.png``: learned rates per layer group (records whose trainer logs rates)."""
    return _plot_trainer_state(inputs.records, inputs.folder)


def history_frame(records: list[dict[str, Any]], df: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch rows (val AUC, train loss) of finished runs, labelled like the tables."""
    labels = {} if df.empty else dict(zip(df["run_name"], df["label"]))
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        c = r["config"]
        label = labels.get(r.get("run_name"), r.get("label"))
        for h in r.get("history") or []:
            rows.append({"dataset": c["dataset"], "method": label, "seed": c["seed"], "epoch": _epoch_number(h),
                         "val_auc": _num(h.get("val_auc")), "train_loss": _num(h.get("train_loss"))})
    return pd.DataFrame(rows)


def _epoch_number(h: dict[str, Any]) -> int | None:
    """Records count epochs from 0; plots number them from 1, as the console does ("epoch 1/10")."""
    epoch = h.get("epoch")
    return None if epoch is None else int(epoch) + 1


_save, _palette = plotting.save, plotting.palette   # shared with benchmarks.curves / benchmarks.learned


def _figure_legend(fig: Any, axes: Any) -> None:
    """One legend for the whole figure with every label of every panel (a panel may lack some methods)."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)


def _plot_vs_params(df: pd.DataFrame, metric: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    datasets = sorted(df["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    agg = df.groupby(["dataset", "label"]).agg(x=("trainable_params", "mean"), y=(metric, "mean"),
                                               err=(metric, "std")).reset_index()
    colors = _palette(list(df["label"].unique()))
    for ax, dataset in zip(axes[0], datasets):
        for row in agg[agg["dataset"] == dataset].itertuples():
            ax.errorbar(row.x, row.y, yerr=0 if pd.isna(row.err) else row.err, fmt="o", capsize=3,
                        color=colors[row.label], label=row.label)
        ax.set_xscale("log")
        ax.set(title=dataset, xlabel="trainable parameters (log)", ylabel=f"test {metric.upper()}")
    fig.tight_layout()
    _figure_legend(fig, axes[0])
    return _save(fig, path)


def _plot_bars(df: pd.DataFrame, metric: str, path: Path) -> Path:
    """Horizontal bars (mean over seeds, sd whisker) with one dot per seed, one panel per dataset.

    The value axis starts just below the lowest seed (stated in the axis label): from 0 the 0.01-0.05 differences
    between methods would be invisible."""
    import math

    import matplotlib.pyplot as plt
    import seaborn as sns
    datasets = sorted(df["dataset"].unique())
    labels = sorted(df["label"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 0.45 * len(labels) + 1.5),
                             squeeze=False, sharey=True)
    for ax, dataset in zip(axes[0], datasets):
        d = df[df["dataset"] == dataset]
        sns.barplot(data=d, y="label", x=metric, order=labels, errorbar="sd", alpha=0.6, ax=ax, color="tab:blue")
        sns.stripplot(data=d, y="label", x=metric, order=labels, ax=ax, color="black", size=4)
        values = d[metric].dropna()
        low = max(0.0, math.floor((values.min() - 0.02) * 20) / 20) if len(values) else 0.0
        ax.set_xlim(low, min(1.0, values.max() + 0.03) if len(values) else 1.0)
        ax.set(title=dataset, ylabel="", xlabel=f"test {metric.upper()} (axis from {low:.2f})")
    fig.tight_layout()
    return _save(fig, path)


def _plot_curves(history: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns
    datasets = sorted(history["dataset"].unique())
    colors = _palette(list(history["method"].unique()))
    fig, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 7), squeeze=False)
    for j, dataset in enumerate(datasets):
        h = history[history["dataset"] == dataset]
        for i, col in enumerate(("val_auc", "train_loss")):
            sns.lineplot(data=h, x="epoch", y=col, hue="method", palette=colors, errorbar="sd", marker="o",
                         ax=axes[i][j], legend=True)
            axes[i][j].set(title=dataset if i == 0 else "", ylabel=col.replace("_", " "))
    fig.tight_layout()
    _figure_legend(fig, axes.flat)
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


def rate_leaves(state: Any) -> dict[str, float]:
    """The rate-like part of a trainer state: leaves under a key naming a rate ("rates", "lr", "head_lr", ...),
    named by the rest of their path ("rates" -> {"stem": 1e-4, ...} gives "stem"). Counters are left out."""
    out: dict[str, float] = {}
    if isinstance(state, dict):
        for key, value in state.items():
            words = str(key).lower().replace("-", "_").split("_")
            if any(w.startswith("rate") or w == "lr" for w in words):
                leaves = _numeric_leaves(value)
                out.update({(name or str(key)): v for name, v in leaves.items()})
            elif isinstance(value, dict):
                out.update({f"{key}.{name}": v for name, v in rate_leaves(value).items()})
    return out


def forward_order(names: list[str]) -> list[str]:
    """Layer-group names stem -> blocks (numbers compared as numbers) -> neck -> head, the order of a forward
    pass (records store keys sorted, so the trainer's own order is lost)."""
    import re
    def rank(name: str) -> tuple:
        low = name.lower()
        place = 0 if "stem" in low else 3 if low in ("head", "fc", "classifier") or low.startswith("head") \
            else 2 if "neck" in low else 1
        return (place, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", low)])
    return sorted(names, key=rank)


def _plot_trainer_state(records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Learned learning rates per layer group and epoch (MetaLR), one plot per method x dataset, lowest seed.

    Only the rate-like part of the trainer state is drawn (a step counter on the same log axis hides the rates),
    one colour per group along a sequential palette from stem to head; nothing is drawn when no record has rates.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        for h in r.get("history") or []:
            for name, v in rate_leaves(h.get("trainer") or {}).items():
                rows.append({"dataset": r["config"]["dataset"], "method": r.get("label") or r["config"]["method"],
                             "seed": r["config"]["seed"], "epoch": _epoch_number(h), "series": name, "value": v})
    if not rows:
        return []
    data = pd.DataFrame(rows)
    written = []
    for (dataset, method), g in data.groupby(["dataset", "method"]):
        g = g[g["seed"] == g["seed"].min()]
        order = forward_order(list(g["series"].unique()))
        colors = sns.color_palette("viridis", len(order))
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for series, color in zip(order, colors):
            s = g[g["series"] == series].sort_values("epoch")
            ax.plot(s["epoch"], s["value"], marker=".", color=color, label=series)
        if (g["value"] > 0).all():
            ax.set_yscale("log")
        ax.set(title=f"{method} on {dataset} (seed {g['seed'].min()}): learned rate per layer group",
               xlabel="epoch", ylabel="learning rate")
        ax.legend(fontsize=6, ncol=2 if len(order) > 10 else 1, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  title="stem → head", title_fontsize=7)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in f"{dataset}__{method}")
        written.append(_save(fig, folder / f"trainer__{safe}.png"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.stats import MIN_RESAMPLES, N_RESAMPLES
    metrics = record_metrics()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="+",
                        help="output folder(s) of sweeps (each holds runs/*.json); several are merged")
    parser.add_argument("--to", type=Path, default=None,
                        help="where tables/ and plots/ go (default: the input folder; required with several)")
    parser.add_argument("--reference", default="full_ft", help="reference method for the paired tests")
    parser.add_argument("--metric", default="auc", choices=metrics, help="metric compared in the paired tests")
    parser.add_argument("--resamples", type=int, default=None, metavar="N",
                        help=f"bootstrap resamples for the interval and paired tables (default {N_RESAMPLES}; more "
                             f"lowers the smallest p a paired test can show, 2 / (N + 1), at a cost in time)")
    parser.add_argument("--select-on", default="none", choices=SELECT_ON,
                        help="val: per method variant (e.g. each loss) keep only the learning rate with the best "
                             "mean validation select_metric (test figures never influence the choice); none: "
                             "report every one")
    args = parser.parse_args(argv)
    if args.resamples is not None and args.resamples < MIN_RESAMPLES:
        print(f"error: --resamples {args.resamples} is too few for a 95% percentile interval; pass at least "
              f"{MIN_RESAMPLES}", file=sys.stderr)
        return 2
    for folder in args.out:
        if not (folder / "runs").is_dir():
            print(f"error: {folder / 'runs'} does not exist; pass the --out folder of a sweep", file=sys.stderr)
            return 2
    if args.to is None and len(args.out) > 1:
        print(f"error: {len(args.out)} input folders given; pass --to DIR for the merged tables and plots",
              file=sys.stderr)
        return 2
    to = args.to or args.out[0]
    if to.exists() and not to.is_dir():
        print(f"error: --to {to} is a file; pass a folder (tables/ and plots/ are written inside it)",
              file=sys.stderr)
        return 2
    from benchmarks.store import StoreError
    try:
        reports = build_reports(args.out, args.reference, args.metric, to=to, select_on=args.select_on,
                                n_resamples=args.resamples)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:       # disk full, no permission: one line naming the file
        print(f"error: cannot write the report into {to} ({exc.strerror or exc}: {exc.filename or to})",
              file=sys.stderr)
        return 1
    print(reports.summary_markdown)
    print(f"tables: {to / 'tables'}  plots: {to / 'plots'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
