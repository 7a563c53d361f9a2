"""Compare our runs with published tables, side by side (``python -m benchmarks.published OUT --to DIR``).

The published numbers are data (``benchmarks/reference/*.csv``), so the comparison extends to any dataset a
user runs. A row counts as *reproduced* when our mean over seeds is within ``TOLERANCE`` of the paper's value
or the paper's value lies inside our seed range (min..max); anything else is flagged for investigation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

REFERENCE_DIR = Path(__file__).parent / "reference"
TOLERANCE = 0.02
METRICS = ("auc", "acc")


def load_reference(name: str = "medmnist_v2") -> pd.DataFrame:
    """The stored published table: columns dataset, model, auc, acc, checked_against."""
    return pd.read_csv(REFERENCE_DIR / f"{name}.csv")


def medmnist_v2_model_id(config: dict[str, Any]) -> str | None:
    """Map a run config to the MedMNIST v2 row it reproduces ("resnet18_28", "resnet50_224", ...) or None.

    "(28)" rows: CIFAR-style ResNet at 28 px. "(224)" rows: a standard ResNet on 28 px files NEAREST-upsampled
    to 224 px. Only from-scratch runs with the benchmark's recipe count (Adam, no augmentation, 0.5/0.5 norm).
    """
    if config.get("weights") is not None or config.get("method") != "full_ft":
        return None
    if config.get("norm") != "half" or config.get("augment") != "none" or config.get("data_size") not in (None, 28) \
            or config.get("optimizer") != "adam":
        return None
    backbone, size = config.get("backbone"), config.get("img_size")
    if backbone in ("cifar_resnet18", "cifar_resnet50") and size == 28:
        return f"{backbone.removeprefix('cifar_')}_28"
    if backbone in ("resnet18", "resnet50") and size == 224 and config.get("resize_mode") == "nearest":
        return f"{backbone}_224"
    return None


def ours_by_row(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (dataset, model id, seed) from the ok records that match a published row."""
    rows = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        model = medmnist_v2_model_id(rec["config"])
        if model is None:
            continue
        test = rec["metrics"]["test"]
        rows.append({"dataset": rec["config"]["dataset"], "model": model, "seed": rec["config"]["seed"],
                     "epochs": rec["config"]["epochs"], **{m: test[m] for m in METRICS}})
    return pd.DataFrame(rows, columns=["dataset", "model", "seed", "epochs", *METRICS])


def compare(ours: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Side-by-side table: our mean ± std and range per metric, the paper's value, difference, verdict."""
    out = []
    for (dataset, model), group in ours.groupby(["dataset", "model"], sort=True):
        ref = reference[(reference.dataset == dataset) & (reference.model == model)]
        row: dict[str, Any] = {"dataset": dataset, "model": model, "n_seeds": len(group),
                               "epochs": ",".join(str(e) for e in sorted(group.epochs.unique()))}
        verdicts: dict[str, bool] = {}
        for m in METRICS:
            values = group[m]
            mean, std = values.mean(), values.std(ddof=1) if len(values) > 1 else float("nan")
            row[f"{m}_ours"] = mean
            row[f"{m}_std"] = std
            row[f"{m}_min"], row[f"{m}_max"] = values.min(), values.max()
            if ref.empty:
                row[f"{m}_paper"] = row[f"{m}_diff"] = float("nan")
                row[f"{m}_reproduced"] = None
                continue
            paper = float(ref.iloc[0][m])
            row[f"{m}_paper"] = paper
            row[f"{m}_diff"] = mean - paper
            ok = abs(mean - paper) <= TOLERANCE or values.min() <= paper <= values.max()
            row[f"{m}_reproduced"] = bool(ok)
            verdicts[m] = bool(ok)
        row["verdict"] = verdict(verdicts)
        out.append(row)
    return pd.DataFrame(out)


def verdict(reproduced: dict[str, bool]) -> str:
    """"reproduced" when every metric is; otherwise name the metrics that are not (and those that are)."""
    if not reproduced:
        return "no published value"
    missed = [m.upper() for m, ok in reproduced.items() if not ok]
    if not missed:
        return "reproduced"
    held = [m.upper() for m, ok in reproduced.items() if ok]
    return f"NOT reproduced ({', '.join(missed)}): investigate" + (f"; {', '.join(held)} reproduced" if held else "")


def to_markdown(table: pd.DataFrame) -> str:
    """Human-readable comparison (mean ± std (range) | paper | diff) per metric."""
    lines = ["| dataset | model | seeds | epochs | AUC ours | AUC paper | diff | ACC ours | ACC paper | diff | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        cells = [r.dataset, r.model, str(r.n_seeds), r.epochs]
        for m in METRICS:
            std = "" if pd.isna(r[f"{m}_std"]) else f" ± {r[f'{m}_std']:.3f}"
            cells += [f"{r[f'{m}_ours']:.3f}{std} ({r[f'{m}_min']:.3f}-{r[f'{m}_max']:.3f})",
                      "-" if pd.isna(r[f"{m}_paper"]) else f"{r[f'{m}_paper']:.3f}",
                      "-" if pd.isna(r[f"{m}_diff"]) else f"{r[f'{m}_diff']:+.3f}"]
        cells.append(r.verdict)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path) -> None:
    """Ours (mean, error bar = std over seeds) against the published value, one point per row and metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4.5))
    for ax, m in zip(axes, METRICS):
        rows = table.dropna(subset=[f"{m}_paper"])
        for _, r in rows.iterrows():
            ax.errorbar(r[f"{m}_paper"], r[f"{m}_ours"], yerr=0 if pd.isna(r[f"{m}_std"]) else r[f"{m}_std"],
                        fmt="o", capsize=3, label=f"{r.dataset} {r.model}")
        lo = min([*rows[f"{m}_paper"], *rows[f"{m}_min"]], default=0.5) - 0.03
        hi = max([*rows[f"{m}_paper"], *rows[f"{m}_max"]], default=1.0) + 0.03
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.fill_between([lo, hi], [lo - TOLERANCE, hi - TOLERANCE], [lo + TOLERANCE, hi + TOLERANCE],
                        color="grey", alpha=0.15, label=f"±{TOLERANCE}")
        ax.set(xlabel=f"published test {m.upper()}", ylabel=f"our test {m.upper()} (mean ± std)",
               xlim=(lo, hi), ylim=(lo, hi), title=f"MedMNIST v2: {m.upper()}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_comparison(out: Path, to: Path) -> pd.DataFrame:
    from .store import RunStore
    records = list(RunStore(out).records())
    table = compare(ours_by_row(records), load_reference())
    to.mkdir(parents=True, exist_ok=True)
    table.to_csv(to / "comparison.csv", index=False)
    (to / "comparison.md").write_text(to_markdown(table))
    if not table.empty:
        plot(table, to / "ours_vs_published.png")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.published", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="sweep output folder holding runs/*.json")
    parser.add_argument("--to", type=Path, default=None, help="where to write comparison.{csv,md,png} (default OUT)")
    args = parser.parse_args(argv)
    if not (args.out / "runs").is_dir():
        print(f"error: {args.out}/runs does not exist; run a sweep with --out {args.out} first", file=sys.stderr)
        return 2
    table = write_comparison(args.out, args.to or args.out)
    print(to_markdown(table) if not table.empty else "no run matches a published MedMNIST v2 row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
