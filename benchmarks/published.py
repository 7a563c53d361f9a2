"""Compare our runs with published tables, side by side (``python -m benchmarks.published OUT --to DIR``).

The published numbers are data (``benchmarks/reference/*.csv``), so the comparison extends to any dataset a
user runs. Only records trained with exactly a published recipe count: the run's resolved configuration must be
the one the preset (``medmnist-v2`` for the "(28)" rows, ``medmnist-v2-224`` for the "(224)" rows) gives for its
method, dataset, seed and backbone (same run key), so a 2-epoch smoke run in the same OUT is never averaged with
the 100-epoch runs. One rule for every metric: *reproduced* when the paper's value lies inside our 95 % interval,
otherwise *outside*, with its distance from our mean in interval half-widths (the half on the paper's side; > 1
means outside). The interval covers seeds and test images (:func:`benchmarks.stats.interval`) when every run has
its per-image predictions; records without them get a t-interval over the seeds (seed variation only, said in
the verdict), and a single seed without predictions gets no verdict.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_DIR = Path(__file__).parent / "reference"
METRICS = ("auc", "acc")
SEEDS_ONLY = "seeds only, no predictions"
# preset -> the published row its runs reproduce, from the run's backbone
PUBLISHED_PRESETS = {"medmnist-v2": lambda backbone: f"{backbone.removeprefix('cifar_')}_28",
                     "medmnist-v2-224": lambda backbone: f"{backbone}_224"}


def load_reference(name: str = "medmnist_v2") -> pd.DataFrame:
    """The stored published table: columns dataset, model, auc, acc, checked_against."""
    return pd.read_csv(REFERENCE_DIR / f"{name}.csv")


@functools.lru_cache(maxsize=None)
def _preset(name: str) -> tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]:
    """(preset data, its methods, the backbones it sweeps or sets)."""
    from benchmarks.sweep import load_preset, parse_set
    data = load_preset(name)
    sweep = data.get("sweep", {})
    backbones = [v for item in map(parse_set, map(str, sweep.get("set", []))) if item.key == "backbone"
                 for v in item.values]
    if "backbone" in data.get("config", {}):
        backbones.append(data["config"]["backbone"])
    return data, tuple(sweep.get("methods", [])), tuple(backbones)


@functools.lru_cache(maxsize=None)
def preset_key(preset: str, method: str, dataset: str, seed: int, backbone: str) -> str | None:
    """The run key ``preset`` gives this (method, dataset, seed, backbone), or None when the preset has no such run."""
    from benchmarks.sweep import SetItem, SweepSpec, expand
    data, methods, backbones = _preset(preset)
    if method not in methods or backbone not in backbones:
        return None
    spec = SweepSpec(methods=[method], datasets=[dataset], seeds=[seed], fields=dict(data.get("config", {})),
                     method_overrides=dict(data.get("methods", {})), sets=[SetItem(None, "backbone", (backbone,))])
    return expand(spec)[0].config.key()


def medmnist_v2_model_id(config: dict[str, Any]) -> str | None:
    """The MedMNIST v2 row ("resnet18_28", "resnet50_224", ...) a run config reproduces, or None.

    A config matches only when it *is* a published preset's run (every recipe field: epochs, lr, batch size,
    schedule, early stopping, limit_train_batches, ...), compared by run key.
    """
    from benchmarks.config import RunConfig
    try:
        cfg = RunConfig.from_dict(config)
    except (TypeError, ValueError):
        return None   # a record from a different code version / not a run config
    for preset, model_id in PUBLISHED_PRESETS.items():
        if preset_key(preset, cfg.method, cfg.dataset, cfg.seed, cfg.backbone) == cfg.key():
            return model_id(cfg.backbone)
    return None


def ours_by_row(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (dataset, model id, seed) from the ok records whose recipe is a published preset's."""
    rows = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        model = medmnist_v2_model_id(rec["config"])
        if model is None:
            continue
        test = rec["metrics"]["test"]
        rows.append({"dataset": rec["config"]["dataset"], "model": model, "seed": rec["config"]["seed"],
                     "epochs": rec["config"]["epochs"], "run_name": rec.get("run_name"),
                     **{m: test[m] for m in METRICS}})
    return pd.DataFrame(rows, columns=["dataset", "model", "seed", "epochs", "run_name", *METRICS])


def our_interval(group: pd.DataFrame, metric: str, preds: Any = None) -> tuple[float, float, float, str]:
    """(mean, low, high, what it covers) of ``metric`` over the group's seeds; see the module docstring."""
    from scipy import stats as sps
    values = group[metric].to_numpy(dtype=float)
    runs = preds.runs(list(group["run_name"])) if preds is not None else []
    if runs and len(runs) == len(group):
        from benchmarks.stats import interval
        mean, low, high = interval(runs, "multiclass", metric)
        return mean, low, high, "seeds x test images"
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan"), "no interval: 1 seed, no predictions"
    half = float(sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half, f"{SEEDS_ONLY} (t-interval over {len(values)} seeds)"


def half_widths(paper: float, mean: float, low: float, high: float) -> float:
    """Distance of ``paper`` from ``mean`` in half-widths of [low, high] on the paper's side (> 1: outside)."""
    half = (high - mean) if paper >= mean else (mean - low)
    if not np.isfinite(half):
        return float("nan")
    if half <= 0:
        return 0.0 if paper == mean else float("inf")
    return abs(paper - mean) / half


def compare(ours: pd.DataFrame, reference: pd.DataFrame, preds: Any = None) -> pd.DataFrame:
    """Side-by-side table: per metric our mean ± std and range over seeds, our 95 % interval and what it covers,
    the paper's value, the difference, its distance in half-widths, ``{m}_reproduced`` (None: no interval), and
    the verdict. ``preds``: a :class:`benchmarks.uncertainty.RunPredictions` (None: seeds only)."""
    out = []
    for (dataset, model), group in ours.groupby(["dataset", "model"], sort=True):
        ref = reference[(reference.dataset == dataset) & (reference.model == model)]
        n = int(group.seed.nunique())
        row: dict[str, Any] = {"dataset": dataset, "model": model, "n_seeds": n,
                               "epochs": ",".join(str(e) for e in sorted(group.epochs.unique()))}
        parts: list[str] = []
        outside = False
        for m in METRICS:
            values = group[m]
            mean, low, high, covers = our_interval(group, m, preds)
            row.update({f"{m}_ours": mean, f"{m}_std": values.std(ddof=1) if len(values) > 1 else float("nan"),
                        f"{m}_min": values.min(), f"{m}_max": values.max(), f"{m}_ci95_low": low,
                        f"{m}_ci95_high": high, f"{m}_interval": covers})
            if ref.empty:
                row[f"{m}_paper"] = row[f"{m}_diff"] = row[f"{m}_half_widths"] = float("nan")
                row[f"{m}_reproduced"] = None
                continue
            paper = float(ref.iloc[0][m])
            distance = half_widths(paper, mean, low, high)
            judged = bool(np.isfinite(low))
            reproduced = bool(low <= paper <= high) if judged else None
            row.update({f"{m}_paper": paper, f"{m}_diff": mean - paper, f"{m}_half_widths": distance,
                        f"{m}_reproduced": reproduced})
            parts.append(metric_verdict(m, paper, low, high, distance, covers, reproduced))
            outside |= reproduced is False
        row["verdict"] = "; ".join(parts) + ("; investigate" if outside else "") if parts else "no published value"
        out.append(row)
    return pd.DataFrame(out)


def metric_verdict(metric: str, paper: float, low: float, high: float, distance: float, covers: str,
                   reproduced: bool | None) -> str:
    """One metric's verdict: the same rule for every metric (inside our 95 % interval or not)."""
    name = metric.upper()
    if reproduced is None:
        return f"{name} not judged ({covers})"
    where = f"our 95% interval [{low:.3f}, {high:.3f}], {covers}"
    if reproduced:
        return f"{name} reproduced (paper {paper:.3f} inside {where}; {distance:.2f} half-widths from our mean)"
    return f"{name} outside (paper {paper:.3f} is {distance:.2f} half-widths from our mean; {where})"


def to_markdown(table: pd.DataFrame) -> str:
    """Human-readable comparison per metric: mean ± std (range) | our 95 % interval | paper | diff | half-widths."""
    head = "| dataset | model | seeds | epochs |" + "".join(
        f" {m.upper()} ours | {m.upper()} 95% interval | {m.upper()} paper | diff | half-widths |"
        for m in METRICS) + " verdict |"
    lines = [head, "|" + "---|" * (5 + 5 * len(METRICS))]
    for _, r in table.iterrows():
        cells = [r.dataset, r.model, str(r.n_seeds), r.epochs]
        for m in METRICS:
            std = "" if pd.isna(r[f"{m}_std"]) else f" ± {r[f'{m}_std']:.3f}"
            ci = "n/a" if pd.isna(r[f"{m}_ci95_low"]) else f"[{r[f'{m}_ci95_low']:.3f}, {r[f'{m}_ci95_high']:.3f}]"
            cells += [f"{r[f'{m}_ours']:.3f}{std} ({r[f'{m}_min']:.3f}-{r[f'{m}_max']:.3f})", ci,
                      "-" if pd.isna(r[f"{m}_paper"]) else f"{r[f'{m}_paper']:.3f}",
                      "-" if pd.isna(r[f"{m}_diff"]) else f"{r[f'{m}_diff']:+.3f}",
                      "-" if pd.isna(r[f"{m}_half_widths"]) else f"{r[f'{m}_half_widths']:.2f}"]
        cells.append(r.verdict)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path) -> None:
    """Ours (mean, error bar = our 95 % interval; none without one) against the published value, one point per
    row and metric; a point whose bar crosses the diagonal is reproduced."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4.5))
    for ax, m in zip(axes, METRICS):
        rows = table.dropna(subset=[f"{m}_paper"])
        for _, r in rows.iterrows():
            has = not pd.isna(r[f"{m}_ci95_low"])
            yerr = [[r[f"{m}_ours"] - r[f"{m}_ci95_low"]], [r[f"{m}_ci95_high"] - r[f"{m}_ours"]]] if has else None
            ax.errorbar(r[f"{m}_paper"], r[f"{m}_ours"], yerr=yerr, fmt="o", capsize=3,
                        label=f"{r.dataset} {r.model} ({r.n_seeds} seed{'s' if r.n_seeds != 1 else ''})")
        lows = [v for v in rows[f"{m}_ci95_low"] if not pd.isna(v)]
        highs = [v for v in rows[f"{m}_ci95_high"] if not pd.isna(v)]
        lo = min([*rows[f"{m}_paper"], *rows[f"{m}_min"], *lows], default=0.5) - 0.03
        hi = max([*rows[f"{m}_paper"], *rows[f"{m}_max"], *highs], default=1.0) + 0.03
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xlabel=f"published test {m.upper()}", ylabel=f"our test {m.upper()} (mean, 95% interval)",
               xlim=(lo, hi), ylim=(lo, hi), title=f"MedMNIST v2: {m.upper()}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_comparison(out: Path, to: Path) -> pd.DataFrame:
    from .store import RunStore
    from .uncertainty import load_predictions
    store = RunStore(out)
    records = list(store.records())
    preds = load_predictions(records, [store.runs_dir])
    for problem in preds.problems:
        print(f"warning: {problem}", file=sys.stderr)
    table = compare(ours_by_row(records), load_reference(), preds)
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
    print(to_markdown(table) if not table.empty else "no run matches a published MedMNIST v2 recipe "
          f"(presets {', '.join(PUBLISHED_PRESETS)}, compared by run key)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
