"""Choose each method's configuration on validation, never on test (``report --select-on val``).

A sweep over e.g. ``--set full_ft.lr=...`` gives one method several configurations (table labels). Reporting the
best test figure among them would pick on test; here each (dataset, device / precision, method variant) keeps the
configuration with the best mean *validation* ``select_metric`` over its seeds (the metric its checkpoints were
selected on; ``loss`` counts lower as better), and only that configuration's test figures reach the tables. Only
learning rates are tuned this way; a method's configurations that differ in anything else (its loss, a rank) are
variants, each with its own choice and row (``benchmarks.variants``).
Only the records' ``metrics.val`` are read, so test results cannot change the choice. Ties go to the label that
sorts first.

Only the configurations with the most seeds of their group compete. While a grid is being filled, a configuration
with one finished seed would otherwise compete on a one-seed mean, which varies more than a three-seed one and so
wins more often than it should, and the table would then report a one-seed row; ``tried`` still lists the others,
marked as not eligible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

SELECT_ON = ("none", "val")


def validation_score(record: dict[str, Any]) -> float:
    """The record's validation ``select_metric`` as "higher is better" (loss negated); NaN when absent."""
    metric = str((record.get("config") or {}).get("select_metric", "auc"))
    val = (record.get("metrics") or {}).get("val") or {}
    value = val.get(metric)
    if value is None:
        return float("nan")
    return -float(value) if metric == "loss" else float(value)


def select_on_validation(df: pd.DataFrame, records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows of ``df`` of the chosen configurations, one row per choice: which won, on what, of how many)."""
    cols = ["dataset", "setting", "method", "variant", "chosen", "select_metric", "val_mean", "n_configs", "tried"]
    if df.empty:
        return df, pd.DataFrame(columns=cols)
    by_run = {str(r.get("run_name")): r for r in records}
    d = df.assign(val_score=[validation_score(by_run[str(n)]) for n in df["run_name"]],
                  select_metric=[str((by_run[str(n)].get("config") or {}).get("select_metric", "auc"))
                                 for n in df["run_name"]])
    keep, rows = [], []
    for (dataset, setting, method, variant), g in d.groupby(["dataset", "setting", "method", "variant"], sort=True):
        means = g.groupby("label")["val_score"].mean().sort_index()
        seeds = g.groupby("label")["seed"].nunique()
        eligible = seeds[seeds == seeds.max()].index          # sorted by label, as ``means`` is
        candidates = means[eligible]
        finite = candidates[np.isfinite(candidates)]
        chosen = finite.idxmax() if len(finite) else eligible[0]
        keep.append(g.index[g["label"] == chosen])
        metric = g["select_metric"].iloc[0]
        sign = -1 if metric == "loss" else 1
        rows.append({"dataset": dataset, "setting": setting, "method": method, "variant": variant, "chosen": chosen,
                     "select_metric": f"val {metric}", "val_mean": sign * float(means[chosen]),
                     "n_configs": len(means),
                     "tried": "; ".join(f"{label}: {sign * v:.4f} ({seeds[label]} seed(s)"
                                        + ("" if label in eligible else
                                           f", not eligible: fewer than {seeds.max()}") + ")"
                                        for label, v in means.items())})
    index = np.concatenate([np.asarray(k) for k in keep]) if keep else np.array([], dtype=int)
    return df.loc[np.sort(index)], pd.DataFrame(rows, columns=cols)


VALIDATION_MARK = " [trains on val]"


def trains_on_validation(method: str) -> bool:
    """Whether a (possibly composed) method trains on the validation split: one whose ``trainer_factory`` is built
    with the validation batches (MetaLR meta-learns its rates on them). Its validation scores then picked the
    checkpoint and the configuration on data it was fitted to, so every table marks it rather than hiding it."""
    import petl
    for name in str(method).split("+"):
        try:
            if petl.get_method(name).trainer_factory is not None:
                return True
        except petl.PetlConfigError:    # a record of a method this version does not know: nothing to say
            continue
    return False


def mark_validation_trained(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with :data:`VALIDATION_MARK` appended to the labels of methods that train on validation."""
    if df.empty:
        return df
    marked = df["method"].map(trains_on_validation).astype(bool)
    out = df.copy()
    out.loc[marked, "label"] = out.loc[marked, "label"] + VALIDATION_MARK
    return out
