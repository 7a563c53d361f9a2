"""The report's tables built from per-image predictions: intervals, paired comparisons, clinical metrics.

Statistics are in :mod:`benchmarks.stats` and :mod:`benchmarks.clinical`; this module finds each finished
run's predictions file, groups runs like the summary table (dataset x method variant, by its ``label``), and
lays the results out. A run without predictions (a record written before they were kept) is counted as
"no predictions" and left out of these tables only; a predictions file that is missing, corrupt or does not
match its record is one line in ``problems`` naming the file, and the report goes on without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from benchmarks import clinical, stats
from benchmarks.metrics import MULTICLASS, MULTILABEL
from benchmarks.predictions import PredictionsError, SplitPredictions, load_for_record

NO_PREDICTIONS = "no predictions"


@dataclass
class RunPredictions:
    """Per run_name: its val / test predictions and task; plus the runs without them and the problems met."""

    by_run: dict[str, dict[str, SplitPredictions]] = field(default_factory=dict)
    task: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)     # records written before predictions were kept
    problems: list[str] = field(default_factory=list)    # one line each: file, what is wrong, the fix
    positive: dict[str, str] = field(default_factory=dict)  # binary runs: the class sensitivity refers to (class 1)

    def names_with(self, run_names: Sequence[str], split: str = "test") -> list[str]:
        """The named runs that have predictions of ``split``, in the given order (those :meth:`runs` returns)."""
        return [name for name in run_names if self.by_run.get(name, {}).get(split) is not None]

    def runs(self, run_names: Sequence[str], split: str = "test") -> list[tuple[np.ndarray, np.ndarray]]:
        """(scores, labels) of each named run that has predictions of ``split``, in the given order."""
        return [(self.by_run[name][split].scores(self.task[name]), self.by_run[name][split].labels)
                for name in self.names_with(run_names, split)]


def record_task(record: dict[str, Any]) -> str:
    """multilabel when the record's test metrics have per-label AUCs (what ``compute_metrics`` writes), else
    multiclass (binary included)."""
    test = (record.get("metrics") or {}).get("test") or {}
    return MULTILABEL if "per_label_auc" in test else MULTICLASS


def load_predictions(records: list[dict[str, Any]], runs_dirs: Sequence[Path]) -> RunPredictions:
    """The predictions of every finished record, looked up beside it in one of ``runs_dirs``."""
    out = RunPredictions()
    for record in records:
        if record.get("status") != "ok":
            continue
        name = str(record.get("run_name"))
        entry = record.get("predictions")
        if not isinstance(entry, dict):
            out.missing.append(name)
            continue
        folder = next((d for d in runs_dirs if (Path(d) / str(entry.get("file"))).exists()), runs_dirs[0])
        try:
            loaded = load_for_record(record, Path(folder))
        except PredictionsError as exc:
            out.problems.append(f"{name}: {exc}")
            continue
        if loaded is None:
            out.missing.append(name)
            continue
        out.by_run[name], out.task[name] = loaded, record_task(record)
        names = ((record.get("metrics") or {}).get("test") or {}).get("class_names") or []
        if len(names) == 2:
            out.positive[name] = f"1 ({names[1]})"
    return out


def _groups(df: pd.DataFrame) -> Any:
    return df.sort_values("seed").groupby(["dataset", "label"], sort=True)


def interval_table(df: pd.DataFrame, preds: RunPredictions, n_resamples: int = stats.N_RESAMPLES) -> pd.DataFrame:
    """Per (dataset, method variant, metric): mean over seeds and the two-level bootstrap 95 % interval."""
    cols = ["dataset", "method", "metric", "n_seeds", "n_with_predictions", "n_test", "mean", "ci95_low",
            "ci95_high", "interval"]
    rows = []
    for (dataset, label), g in _groups(df):
        with_predictions = preds.names_with(list(g["run_name"]))
        runs = preds.runs(with_predictions)
        for metric in stats.interval_metrics():
            row = {"dataset": dataset, "method": label, "metric": metric, "n_seeds": int(g["seed"].nunique()),
                   "n_with_predictions": len(runs), "n_test": len(runs[0][1]) if runs else np.nan,
                   "mean": float(g[metric].mean()), "ci95_low": np.nan, "ci95_high": np.nan,
                   "interval": NO_PREDICTIONS}
            if runs:
                try:
                    point, low, high = stats.interval(runs, preds.task[with_predictions[0]], metric, n_resamples)
                except ValueError as exc:
                    row["interval"] = str(exc)
                else:
                    row.update(mean=point, ci95_low=low, ci95_high=high,
                               interval="seeds x test images" if len(runs) == len(g) else
                               f"seeds x test images ({len(runs)} of {len(g)} seeds have predictions)")
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def paired_table(df: pd.DataFrame, preds: RunPredictions, reference: str, metric: str,
                 n_resamples: int = stats.N_RESAMPLES) -> pd.DataFrame:
    """Each method variant vs the reference method's variant trained the same way (``benchmarks.variants``) on
    the same dataset and device / precision, seeds matched, on the same test images; Holm-adjusted across the
    table."""
    cols = ["dataset", "method", "reference", "metric", "n_seed_pairs", "n_test", "diff", "ci95_low", "ci95_high",
            "p_bootstrap", "p_bootstrap_holm", "p_delong", "p_delong_holm", "note"]
    rows = []
    from benchmarks.variants import reference_pairs
    for (dataset, _), d in df.groupby(["dataset", "setting"]):
        for label, m, ref_label in reference_pairs(d, reference):   # each with the reference trained the same way
            ref_by_seed = d[d["label"] == ref_label].set_index("seed")["run_name"]
            row: dict[str, Any] = {"dataset": dataset, "method": label, "reference": ref_label, "metric": metric,
                                   "n_test": np.nan, "diff": np.nan, "ci95_low": np.nan, "ci95_high": np.nan,
                                   "p_bootstrap": np.nan, "p_delong": np.nan}
            pairs = [(run, ref_by_seed[seed]) for seed, run in m.set_index("seed")["run_name"].items()
                     if seed in ref_by_seed.index and len(preds.names_with([run, ref_by_seed[seed]])) == 2]
            row["n_seed_pairs"] = len(pairs)
            if not pairs:
                row["note"] = NO_PREDICTIONS + " for matching seeds"
                rows.append(row)
                continue
            task = preds.task[pairs[0][0]]
            ours, theirs = preds.runs([p[0] for p in pairs]), preds.runs([p[1] for p in pairs])
            try:
                row.update(stats.paired_difference(ours, theirs, task, metric, n_resamples))
            except ValueError as exc:
                row["note"] = str(exc)
                rows.append(row)
                continue
            row["n_test"] = len(ours[0][1])
            notes = [f"paired bootstrap over test images, {len(pairs)} matched seed(s)"]
            if metric == "auc" and task != MULTILABEL and ours[0][0].shape[1] == 2:
                try:
                    delong = stats.delong_paired(np.stack([s[:, 1] for s, _ in ours]),
                                                 np.stack([s[:, 1] for s, _ in theirs]), ours[0][1])
                    row["p_delong"] = delong["p_delong"]
                except ValueError as exc:
                    notes.append(f"no DeLong: {exc}")
            row["note"] = "; ".join(notes)
            rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    for col in ("p_bootstrap", "p_delong"):
        out[f"{col}_holm"] = stats.holm(out[col].to_numpy(dtype=float)) if len(out) else []
    return out


def holm_floor_text(n_resamples: int, n_comparisons: int) -> str:
    """How low a Holm-adjusted bootstrap p of the paired table can go: with 2,000 resamples and ~50 comparisons
    the floor is ~0.05, so whether a difference "holds after Holm" is then limited by the resampling itself."""
    if n_comparisons == 0:
        return "*_holm: Holm-adjusted across the table."
    floor = stats.holm_floor(n_resamples, n_comparisons)
    family = f"{n_comparisons} comparison{'s' if n_comparisons != 1 else ''}"
    return (f"*_holm: Holm-adjusted across the table's {family}; with {n_resamples} resamples "
            f"no p_bootstrap_holm can fall below {floor:.2g} (more: python -m benchmarks.report --resamples N).")


def clinical_table(df: pd.DataFrame, preds: RunPredictions) -> pd.DataFrame:
    """Per (dataset, method variant): mean and std over seeds of every metric computed from predictions
    (:mod:`benchmarks.clinical`'s and any other registered with ``needs="scores"`` or ``"val_scores"``)."""
    names = clinical.clinical_names()   # every registered prediction metric (benchmarks.metric_registry)
    cols = ["dataset", "method", "n_with_predictions", "positive_class"] + [
        f"{m}_{s}" for m in names for s in ("mean", "std")]
    rows = []
    for (dataset, label), g in _groups(df):
        per_run = []
        for name in g["run_name"]:
            p = preds.by_run.get(name)
            if p is None or "val" not in p or "test" not in p:
                continue
            task = preds.task[name]
            per_run.append(clinical.clinical_metrics(p["val"].scores(task), p["val"].labels,
                                                     p["test"].scores(task), p["test"].labels, task))
        row: dict[str, Any] = {"dataset": dataset, "method": label, "n_with_predictions": len(per_run),
                               "positive_class": preds.positive.get(str(g["run_name"].iloc[0]), "")}
        for m in names:
            values = np.array([r[m] for r in per_run], dtype=float)
            finite = values[np.isfinite(values)]
            row[f"{m}_mean"] = finite.mean() if len(finite) else np.nan
            row[f"{m}_std"] = finite.std(ddof=1) if len(finite) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def pretty_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method): 'mean [low, high]' per metric, or the mean and 'no predictions'."""
    if table.empty:
        return pd.DataFrame(columns=["dataset", "method", "n_seeds", *stats.interval_metrics()])
    rows = []
    for (dataset, method), g in table.groupby(["dataset", "method"], sort=True):
        row = {"dataset": dataset, "method": method, "n_seeds": int(g["n_seeds"].iloc[0]),
               "n_test": "" if pd.isna(g["n_test"].iloc[0]) else int(g["n_test"].iloc[0])}
        for r in g.itertuples():
            row[r.metric] = f"{r.mean:.3f} ({NO_PREDICTIONS})" if pd.isna(r.ci95_low) else \
                f"{r.mean:.3f} [{r.ci95_low:.3f}, {r.ci95_high:.3f}]"
        rows.append(row)
    return pd.DataFrame(rows)
