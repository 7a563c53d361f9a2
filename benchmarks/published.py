"""Compare our runs with published tables, side by side (``python -m benchmarks.published OUT --to DIR``).

The published numbers are data (``benchmarks/reference/*.csv``), so the comparison extends to any dataset a
user runs. Only records trained with exactly a published recipe count: the run's resolved configuration must be
the one the preset (``medmnist-v2`` for the "(28)" rows, ``medmnist-v2-224`` for the "(224)" rows) gives for its
method, dataset, seed and backbone (same run key), so a 2-epoch smoke run in the same OUT is never averaged with
the 100-epoch runs. Per metric two criteria are reported: our mean within ``TOLERANCE`` of the paper's value,
and the paper's value inside our seed range (min..max, judged only with >= 2 seeds). A metric is *reproduced*
when either holds, and the verdict names which; anything else is flagged for investigation.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import pandas as pd

REFERENCE_DIR = Path(__file__).parent / "reference"
TOLERANCE = 0.02
METRICS = ("auc", "acc")
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
                     "epochs": rec["config"]["epochs"], **{m: test[m] for m in METRICS}})
    return pd.DataFrame(rows, columns=["dataset", "model", "seed", "epochs", *METRICS])


def compare(ours: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Side-by-side table: our mean ± std and range per metric, the paper's value, difference, both criteria
    (``{m}_within_tol``, ``{m}_paper_in_seed_range``: None with fewer than 2 seeds), verdict."""
    out = []
    for (dataset, model), group in ours.groupby(["dataset", "model"], sort=True):
        ref = reference[(reference.dataset == dataset) & (reference.model == model)]
        n = int(group.seed.nunique())
        row: dict[str, Any] = {"dataset": dataset, "model": model, "n_seeds": n,
                               "epochs": ",".join(str(e) for e in sorted(group.epochs.unique()))}
        parts: list[str] = []
        missed = False
        for m in METRICS:
            values = group[m]
            mean, std = values.mean(), values.std(ddof=1) if len(values) > 1 else float("nan")
            row[f"{m}_ours"] = mean
            row[f"{m}_std"] = std
            row[f"{m}_min"], row[f"{m}_max"] = values.min(), values.max()
            if ref.empty:
                row[f"{m}_paper"] = row[f"{m}_diff"] = float("nan")
                row[f"{m}_within_tol"] = row[f"{m}_paper_in_seed_range"] = row[f"{m}_reproduced"] = None
                continue
            paper = float(ref.iloc[0][m])
            within = bool(abs(mean - paper) <= TOLERANCE)
            in_range = bool(values.min() <= paper <= values.max()) if n >= 2 else None
            row.update({f"{m}_paper": paper, f"{m}_diff": mean - paper, f"{m}_within_tol": within,
                        f"{m}_paper_in_seed_range": in_range, f"{m}_reproduced": within or bool(in_range)})
            parts.append(metric_verdict(m, mean - paper, within, in_range, n))
            missed |= not (within or bool(in_range))
        row["verdict"] = "; ".join(parts) + ("; investigate" if missed else "") if parts else "no published value"
        out.append(row)
    return pd.DataFrame(out)


def metric_verdict(metric: str, diff: float, within: bool, in_range: bool | None, n_seeds: int) -> str:
    """One metric's verdict naming the criterion that held (or why neither did)."""
    met = ([f"mean within {TOLERANCE:g}"] if within else []) + (["paper inside seed range"] if in_range else [])
    spread = f"{n_seeds} seed: too few seeds to judge spread" if in_range is None else ""
    if met:
        return f"{metric.upper()} reproduced ({' and '.join(met)}{'; ' + spread if spread else ''})"
    why = [f"mean {diff:+.3f} from paper, beyond {TOLERANCE:g}", spread or "paper outside seed range"]
    return f"{metric.upper()} NOT reproduced ({'; '.join(why)})"


def to_markdown(table: pd.DataFrame) -> str:
    """Human-readable comparison per metric: mean ± std (range) | paper | diff | paper inside our seed range."""
    head = "| dataset | model | seeds | epochs |" + "".join(
        f" {m.upper()} ours | {m.upper()} paper | diff | paper in seed range |" for m in METRICS) + " verdict |"
    lines = [head, "|" + "---|" * (5 + 4 * len(METRICS))]
    for _, r in table.iterrows():
        cells = [r.dataset, r.model, str(r.n_seeds), r.epochs]
        for m in METRICS:
            std = "" if pd.isna(r[f"{m}_std"]) else f" ± {r[f'{m}_std']:.3f}"
            in_range = r[f"{m}_paper_in_seed_range"]
            cells += [f"{r[f'{m}_ours']:.3f}{std} ({r[f'{m}_min']:.3f}-{r[f'{m}_max']:.3f})",
                      "-" if pd.isna(r[f"{m}_paper"]) else f"{r[f'{m}_paper']:.3f}",
                      "-" if pd.isna(r[f"{m}_diff"]) else f"{r[f'{m}_diff']:+.3f}",
                      "n/a (< 2 seeds)" if in_range is None or pd.isna(in_range) else ("yes" if in_range else "no")]
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
    print(to_markdown(table) if not table.empty else "no run matches a published MedMNIST v2 recipe "
          f"(presets {', '.join(PUBLISHED_PRESETS)}, compared by run key)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
