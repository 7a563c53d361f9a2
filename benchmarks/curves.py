"""Curves from per-image predictions: ROC and precision-recall (every method of a dataset on one figure), a
reliability diagram and confusion-matrix heatmaps. Called by ``benchmarks.report``; runs whose records kept no
predictions are left out and counted in the figure's note. Each figure kind is a registered plot
(:func:`benchmarks.plotting.register_plot`).

Choices: binary tasks use the positive class 1 (as MedMNIST's AUC does); multiclass and multilabel tasks use the
micro average over one-vs-rest columns. Each seed is one thin line, in the method's colour; the legend gives the
mean area over seeds. The reliability diagram and the confusion matrices pool the test images of all seeds of a
method (the same images once per seed), so they show the method, not one seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from benchmarks.plotting import PlotInputs, get_plot, register_plot

RELIABILITY_BINS = 10


def _binary_view(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y_true 0/1, score) flattened: positive class of a binary task, micro one-vs-rest otherwise."""
    if labels.ndim == 2:                                   # multilabel: already one 0/1 column per label
        return labels.reshape(-1).astype(int), scores.reshape(-1)
    if scores.shape[1] == 2:
        return (labels == 1).astype(int), scores[:, 1]
    onehot = np.eye(scores.shape[1], dtype=int)[labels]
    return onehot.reshape(-1), scores.reshape(-1)


def _runs_by_label(df: pd.DataFrame, preds: Any, dataset: str) -> tuple[dict[str, list[tuple[np.ndarray, np.ndarray]]],
                                                                       int]:
    """label -> [(scores, labels) per seed] for ``dataset``'s runs with test predictions; and how many had none."""
    d = df[df["dataset"] == dataset].sort_values(["label", "seed"])
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    skipped = 0
    for label, name in zip(d["label"], d["run_name"]):
        got = preds.runs([name])
        if got:
            out.setdefault(label, []).append(got[0])
        else:
            skipped += 1
    return out, skipped


def _note(skipped: int) -> str:
    return f" ({skipped} run(s) without predictions not shown)" if skipped else ""


def _style(label: str, reference: str, colors: dict[str, Any]) -> dict[str, Any]:
    is_ref = label == reference or label.startswith(reference + "[") or label.startswith(reference + " ")
    return {"color": "black" if is_ref else colors[label], "ls": "--" if is_ref else "-"}


def plot_roc_pr(df: pd.DataFrame, preds: Any, dataset: str, reference: str, path: Path) -> Path | None:
    """ROC (left) and precision-recall (right) of every method on ``dataset``; the reference dashed black."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve
    from benchmarks.plotting import palette as _palette, save as _save
    runs, skipped = _runs_by_label(df, preds, dataset)
    if not runs:
        return None
    colors = _palette(list(runs))
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 4.8))
    prevalence = []
    for label, seeds in runs.items():
        style = _style(label, reference, colors)
        aucs, aps = [], []
        for i, (scores, labels) in enumerate(seeds):
            y, s = _binary_view(scores, labels)
            fpr, tpr, _ = roc_curve(y, s)
            prec, rec, _ = precision_recall_curve(y, s)
            aucs.append(auc(fpr, tpr))
            aps.append(average_precision_score(y, s))
            prevalence.append(y.mean())
            kw = dict(lw=1.2, alpha=0.85, **style)
            ax_roc.plot(fpr, tpr, label=f"{label} (AUC {np.mean(aucs):.3f}, n={len(seeds)})" if i == len(seeds) - 1
                        else None, **kw)
            ax_pr.step(rec, prec, where="post", label=f"{label} (AP {np.mean(aps):.3f})" if i == len(seeds) - 1
                       else None, **kw)
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    ax_pr.axhline(float(np.mean(prevalence)), color="grey", lw=0.8, ls=":", label="chance (prevalence)")
    task = "positive class 1" if all(s.shape[1] == 2 and l.ndim == 1 for v in runs.values() for s, l in v) \
        else "micro-average one-vs-rest"
    ax_roc.set(title="ROC", xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
               xlim=(0, 1), ylim=(0, 1.02))
    ax_pr.set(title="Precision-recall", xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1),
              ylim=(0, 1.02))
    many = len(runs) > 6            # a long legend goes below the panel, where it hides no curve
    for ax in (ax_roc, ax_pr):
        if many:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.19), ncol=2, frameon=False)
        else:
            ax.legend(fontsize=7, loc="lower right" if ax is ax_roc else "lower left", frameon=True)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{dataset} test: {task}; one line per seed{_note(skipped)}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def reliability(scores: np.ndarray, labels: np.ndarray, bins: int = RELIABILITY_BINS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Top-label confidence vs accuracy in equal-width bins: (mean confidence, accuracy, count) per non-empty
    bin and the expected calibration error (count-weighted |accuracy - confidence|)."""
    conf = scores.max(1)
    right = (scores.argmax(1) == labels).astype(float)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)   # bins (lo, hi], as benchmarks.clinical
    mc, acc, n = [], [], []
    for b in range(bins):
        m = which == b
        if m.any():
            mc.append(conf[m].mean())
            acc.append(right[m].mean())
            n.append(int(m.sum()))
    mc_a, acc_a, n_a = np.array(mc), np.array(acc), np.array(n)
    ece = float((n_a * np.abs(acc_a - mc_a)).sum() / max(n_a.sum(), 1))
    return mc_a, acc_a, n_a, ece


def plot_reliability(df: pd.DataFrame, preds: Any, dataset: str, reference: str, path: Path) -> Path | None:
    """Reliability diagram of every single-label method on ``dataset`` (test images of all seeds pooled)."""
    import matplotlib.pyplot as plt
    from benchmarks.plotting import palette as _palette, save as _save
    runs, skipped = _runs_by_label(df, preds, dataset)
    runs = {k: v for k, v in runs.items() if all(l.ndim == 1 for _, l in v)}
    if not runs:
        return None
    colors = _palette(list(runs))
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect calibration")
    for label, seeds in runs.items():
        scores = np.concatenate([s for s, _ in seeds])
        labels = np.concatenate([l for _, l in seeds])
        mc, acc, _, ece = reliability(scores, labels)
        ax.plot(mc, acc, marker="o", ms=4, lw=1.2, label=f"{label} (ECE {ece:.3f})", **_style(label, reference, colors))
    low = 1.0 / max(s.shape[1] for v in runs.values() for s, _ in v)
    ax.set(title=f"{dataset} test: reliability ({RELIABILITY_BINS} bins, seeds pooled){_note(skipped)}",
           xlabel="confidence (top-class probability)", ylabel="accuracy in bin", xlim=(low - 0.02, 1.01),
           ylim=(0, 1.02))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if len(runs) > 6:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.14), ncol=2, frameon=False)
    else:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(df: pd.DataFrame, preds: Any, dataset: str, class_names: list[str], path: Path) -> Path | None:
    """One row-normalised confusion matrix per single-label method on ``dataset`` (counts summed over seeds)."""
    import matplotlib.pyplot as plt
    import textwrap
    from benchmarks.plotting import save as _save
    runs, skipped = _runs_by_label(df, preds, dataset)
    runs = {k: v for k, v in runs.items() if all(l.ndim == 1 for _, l in v)}
    if not runs:
        return None
    k = max(s.shape[1] for v in runs.values() for s, _ in v)
    names = [textwrap.shorten(n, 14, placeholder="…") for n in class_names] if len(class_names) == k \
        else [str(i) for i in range(k)]
    cols = min(3, len(runs))
    rows = -(-len(runs) // cols)
    side = 1.2 + 0.45 * k
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (side + 1.8) + 1.0, rows * (side + 1.0)), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    image = None
    for ax, (label, seeds) in zip(axes.ravel(), runs.items()):
        counts = np.zeros((k, k), dtype=int)
        for scores, labels in seeds:
            np.add.at(counts, (labels, scores.argmax(1)), 1)
        rate = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.axis("on")
        image = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
        if k <= 10:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, f"{rate[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=7,
                            color="white" if rate[i, j] > 0.6 else "black")
        ax.set_xticks(range(k), names, rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center", fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set(title=f"{label} (n={len(seeds)} seed(s))", xlabel="predicted", ylabel="true class")
        ax.title.set_fontsize(8)
    fig.suptitle(f"{dataset} test: confusion matrices, row-normalised (counts summed over seeds){_note(skipped)}",
                 fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="fraction of the true class")
    return _save(fig, path)


def _per_dataset(inputs: PlotInputs, draw: Callable[[str, str], Path | None]) -> list[Path]:
    """``draw(dataset, safe file-name part)`` for every dataset with finished runs; the figures it wrote."""
    if inputs.df.empty:
        return []
    written = []
    for dataset in sorted(inputs.df["dataset"].unique()):
        path = draw(dataset, "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset))
        if path is not None:
            written.append(path)
    return written


@register_plot("roc_pr")
def roc_pr_plots(inputs: PlotInputs) -> list[Path]:
    """``roc_pr__<dataset>.png`` (records without predictions: skipped)."""
    return _per_dataset(inputs, lambda d, safe: plot_roc_pr(inputs.df, inputs.preds, d, inputs.reference,
                                                            inputs.folder / f"roc_pr__{safe}.png"))


@register_plot("reliability")
def reliability_plots(inputs: PlotInputs) -> list[Path]:
    """``reliability__<dataset>.png``."""
    return _per_dataset(inputs, lambda d, safe: plot_reliability(inputs.df, inputs.preds, d, inputs.reference,
                                                                 inputs.folder / f"reliability__{safe}.png"))


@register_plot("confusion")
def confusion_plots(inputs: PlotInputs) -> list[Path]:
    """``confusion__<dataset>.png``, classes named from the records' test metrics."""
    names: dict[str, list[str]] = {}
    for r in inputs.records:
        test = ((r.get("metrics") or {}).get("test") or {})
        if r.get("status") == "ok" and test.get("class_names"):
            names.setdefault(r["config"]["dataset"], list(test["class_names"]))
    return _per_dataset(inputs, lambda d, safe: plot_confusion(inputs.df, inputs.preds, d, names.get(d, []),
                                                               inputs.folder / f"confusion__{safe}.png"))


CURVE_PLOTS = ("roc_pr", "reliability", "confusion")


def make_curve_plots(df: pd.DataFrame, preds: Any, records: list[dict[str, Any]], folder: Path,
                     reference: str) -> list[Path]:
    """Every curve figure (``roc_pr__D.png``, ``reliability__D.png``, ``confusion__D.png``) per dataset: this
    module's registered plots, drawn on their own."""
    inputs = PlotInputs(df, records, folder, preds, reference)
    return [p for name in CURVE_PLOTS for p in get_plot(name)(inputs)]
