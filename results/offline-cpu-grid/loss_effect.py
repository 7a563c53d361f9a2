"""ISIC 2018: what inverse-frequency cross-entropy does to each method, paired with the same method's plain rows.

The report's paired table compares every row with full_ft trained the same way (``benchmarks.variants``), so it
answers "which method, given the loss", not "what did weighting the loss change for this method". This script
answers the second: for each method with both losses, weighted minus plain on the same test images, seeds
matched, each loss at the learning rate validation chose for it (``--select-on val``, as in the tables), with the
report's paired bootstrap (``benchmarks.stats.paired_difference``) on balanced accuracy, AUC, accuracy and macro
F1, Holm-adjusted across this table's comparisons (its own family: a separate question from the paired table's).

Run from the repository root (about 5 minutes on 2 cores):
    python results/offline-cpu-grid/loss_effect.py > results/offline-cpu-grid/loss_effect.md
"""
from pathlib import Path

import numpy as np

from benchmarks import stats, uncertainty
from benchmarks.report import load_records, runs_frame
from benchmarks.selection import mark_validation_trained, select_on_validation

OUT = Path(__file__).resolve().parent
DATASET = "isic2018"
METRICS = ("balanced_acc", "auc", "acc", "macro_f1")
N_RESAMPLES = 20_000   # as the committed tables (--resamples 20000): the Holm floor 2m/(N+1) stays far below 0.05

records = [r for r in load_records([OUT]) if r.get("config", {}).get("dataset") == DATASET]
df, _ = select_on_validation(mark_validation_trained(runs_frame(records)), records)
df["loss"] = [r["config"]["loss"] for r in (next(x for x in records if x["run_name"] == n) for n in df["run_name"])]
weighted_methods = sorted(set(df.loc[df["loss"] == "weighted_ce", "method"]))
kept = set(df.loc[df["method"].isin(weighted_methods), "run_name"])
preds = uncertainty.load_predictions([r for r in records if r["run_name"] in kept], [OUT / "runs"])

rows = []
for method in weighted_methods:
    m = df[df["method"] == method]
    weighted, plain = (m[m["loss"] == loss].set_index("seed") for loss in ("weighted_ce", "ce"))
    seeds = sorted(set(weighted.index) & set(plain.index))
    ours = preds.runs([weighted.loc[s, "run_name"] for s in seeds])
    theirs = preds.runs([plain.loc[s, "run_name"] for s in seeds])
    task = preds.task[weighted.loc[seeds[0], "run_name"]]
    for metric in METRICS:
        d = stats.paired_difference(ours, theirs, task, metric, N_RESAMPLES)
        rows.append({"method": method, "weighted": weighted["label"].iloc[0], "plain": plain["label"].iloc[0],
                     "metric": metric, "seeds": len(seeds), "plain_mean": float(plain.loc[seeds, metric].mean()),
                     "weighted_mean": float(weighted.loc[seeds, metric].mean()), **d})
holm = stats.holm(np.array([r["p_bootstrap"] for r in rows]))

print(f"# {DATASET}: weighted minus plain cross-entropy, per method\n")
print("Each loss at its own validation-chosen lr; paired bootstrap over the 1,512 test images with seeds matched "
      f"({stats.method_text(N_RESAMPLES)}); p_holm: Holm across the {len(rows)} comparisons below, none of which "
      f"can fall below {stats.holm_floor(N_RESAMPLES, len(rows)):.4f} with these resamples. Made with "
      "`python results/offline-cpu-grid/loss_effect.py`.\n")
print("| method | weighted row | plain row | metric | seeds | plain | weighted | difference [95 % interval] "
      "| p_bootstrap | p_holm |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r, p in zip(rows, holm):
    print(f"| {r['method']} | {r['weighted']} | {r['plain']} | {r['metric']} | {r['seeds']} | {r['plain_mean']:.3f} | "
          f"{r['weighted_mean']:.3f} | {r['diff']:+.3f} [{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}] | "
          f"{r['p_bootstrap']:.4f} | {p:.3f} |")
