"""What a reader needs next to the metrics: size of what was trained, per-class recall, the chance level, and
numbers printed as numbers (``93,698``, ``1,714 MB``; never ``1.045e+06``).

* **Majority class.** A classifier that always answers the most frequent test class reaches ACC = its share
  of the test set (BreastMNIST: 114 / 156 = 0.731), AUC 0.5, balanced accuracy 1 / C, macro-F1 =
  (2p / (1 + p)) / C. A short run can land below it, so every dataset's table shows that row; the class counts
  come from the records' own test confusion matrices (rows = true class), so no data is reloaded.
* **Per-class recall** (sensitivity per class) is the record's ``per_class_recall``, averaged over seeds.
* **Settings that vary.** When the runs of a table differ in backbone, image size or epochs, those columns are
  shown (a merged report otherwise puts a 2-epoch and a 12-epoch run side by side without saying so).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

MAJORITY = "majority class (chance)"
VARYING = ("backbone", "img_size", "epochs")     # shown in the summary when they differ between its runs


def class_counts(record: dict[str, Any]) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """(class names, test count per true class) from a record's test confusion matrix, None without one."""
    test = (record.get("metrics") or {}).get("test") or {}
    matrix = test.get("confusion_matrix")
    if not matrix or not all(isinstance(row, list) for row in matrix):
        return None
    counts = tuple(int(sum(row)) for row in matrix)
    names = tuple(test.get("class_names") or (str(i) for i in range(len(counts))))
    return names, counts


def majority_metrics(counts: tuple[int, ...]) -> dict[str, float]:
    """Test metrics of always predicting the most frequent class: each registered record metric's ``chance``
    (formulas in the module docstring; NaN for a metric that declares none) and the per-class recall."""
    recall = [1.0 if i == int(np.argmax(counts)) else 0.0 for i in range(len(counts))]
    return {**{spec.name: float("nan") if spec.chance is None else spec.chance(counts) for spec in _record_specs()},
            "per_class_recall": recall}


def _record_specs() -> list[Any]:
    import benchmarks.metrics  # noqa: F401  (registers the built-in record metrics)
    from benchmarks.metric_registry import metrics
    return metrics("record")


def majority_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per dataset (per distinct test set, e.g. a seed-carved folder split) of finished records."""
    rows, seen = [], set()
    metric_names = [spec.name for spec in _record_specs()]
    for r in records:
        if r.get("status") != "ok":
            continue
        found = class_counts(r)
        dataset = (r.get("config") or {}).get("dataset")
        if found is None or (dataset, found) in seen or sum(found[1]) == 0:
            continue
        seen.add((dataset, found))
        names, counts = found
        m = majority_metrics(counts)
        rows.append({"dataset": dataset, "method": MAJORITY, "n_test": sum(counts),
                     "majority_class": names[int(np.argmax(counts))],
                     **{k: m[k] for k in metric_names},
                     "recall_per_class": recall_text(names, m["per_class_recall"])})
    return pd.DataFrame(rows, columns=["dataset", "method", "n_test", "majority_class", *metric_names,
                                       "recall_per_class"])


def recall_text(names: Any, recalls: Any) -> str:
    """``malignant 0.14 · normal, benign 0.93`` (class names may hold commas, hence the dot separator)."""
    if recalls is None or len(recalls) == 0:
        return "–"
    names = list(names) if names is not None and len(names) == len(recalls) else [str(i) for i in range(len(recalls))]
    return " · ".join(f"{n} {v:.2f}" for n, v in zip(names, recalls))


def summary_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, label): trainable parameters (mean over seeds, absolute and %), mean per-class recall, and
    the ``VARYING`` settings that are not the same for every run of ``df``."""
    cols = ["dataset", "label", "trainable_params", "percent_trainable", "recall_per_class"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    varying = [c for c in VARYING if c in df and df[c].nunique(dropna=False) > 1]
    rows = []
    for (dataset, label), g in df.groupby(["dataset", "label"], sort=True):
        recalls = [np.asarray(v, dtype=float) for v in g.get("per_class_recall", []) if isinstance(v, list) and v]
        same = recalls and len({len(v) for v in recalls}) == 1
        mean_recall = np.mean(recalls, axis=0) if same else None
        names = next((v for v in g.get("class_names", []) if isinstance(v, list)), None)
        rows.append({"dataset": dataset, "label": label, **{c: g[c].iloc[0] for c in varying},
                     "trainable_params": g["trainable_params"].mean(),
                     "percent_trainable": g["percent_trainable"].mean(),
                     "recall_per_class": recall_text(names, mean_recall) if mean_recall is not None else "–"})
    return pd.DataFrame(rows, columns=["dataset", "label", *varying, *cols[2:]])


def count_text(value: Any) -> str:
    """``93,698``; ``–`` when unknown."""
    return "–" if value is None or pd.isna(value) else f"{value:,.0f}"


def megabytes(value: Any) -> str:
    """Bytes as ``1,714 MB`` (``0.38 MB`` below 10 MB)."""
    if value is None or pd.isna(value):
        return "–"
    mb = float(value) / 2**20
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2f} MB"


def pretty_efficiency(eff: pd.DataFrame) -> pd.DataFrame:
    """The efficiency table for Markdown / LaTeX: counts with separators, sizes in MB, rates to 3 digits."""
    if eff.empty:
        return eff
    out = eff.copy()
    out["trainable_params"] = out["trainable_params"].map(count_text)
    out["percent_trainable"] = out["percent_trainable"].map(lambda v: "–" if pd.isna(v) else f"{v:.2f} %")
    for col in ("adapter_bytes", "peak_memory_bytes"):
        out[col] = out[col].map(megabytes)
    for col in ("train_images_per_s", "infer_images_per_s"):
        out[col] = out[col].map(lambda v: "–" if pd.isna(v) else f"{v:,.1f}")
    out["epoch_time_s"] = out["epoch_time_s"].map(lambda v: "–" if pd.isna(v) else f"{v:,.2f}")
    return out.rename(columns={"trainable_params": "trainable params", "percent_trainable": "% trainable",
                               "adapter_bytes": "adapter size", "peak_memory_bytes": "peak memory",
                               "train_images_per_s": "train img/s", "infer_images_per_s": "infer img/s",
                               "epoch_time_s": "epoch s"})
