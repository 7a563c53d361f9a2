"""Time the report's interval and paired tables on one dataset of the committed grid, with whichever benchmarks/ the
working directory provides; write both tables to DEST for a bit-identity check between two trees.

Run from a tree's root:  PYTHONPATH=. python results/benchmarks/ab_report_tables.py isic2018 /tmp/tables_a 2000
"""
import sys
import time
from pathlib import Path

from benchmarks import uncertainty
from benchmarks.report import load_records, runs_frame
from benchmarks.selection import mark_validation_trained, select_on_validation
out = Path("results/offline-cpu-grid"); ds = sys.argv[1]; dest = Path(sys.argv[2]); n = int(sys.argv[3])
records = [r for r in load_records([out]) if r.get("config", {}).get("dataset") == ds]
df, _ = select_on_validation(mark_validation_trained(runs_frame(records)), records)
preds = uncertainty.load_predictions(records, [out / "runs"])
t0 = time.perf_counter(); it = uncertainty.interval_table(df, preds, n); t1 = time.perf_counter()
pt = uncertainty.paired_table(df, preds, "full_ft", "auc", n); t2 = time.perf_counter()
dest.mkdir(parents=True, exist_ok=True); it.to_csv(dest / "intervals.csv", index=False); pt.to_csv(dest / "paired.csv", index=False)
print(f"{uncertainty.__file__} {ds} n={n}: interval_table {t1 - t0:.1f} s, paired_table {t2 - t1:.1f} s")
