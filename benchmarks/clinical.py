"""Metrics a clinician asks for, from stored per-image predictions: AUPRC, calibration, and operating points.

ROC-AUC and accuracy say little about a rare positive class or about whether a 0.9 score means 90 %. These do:

* ``auprc``: average precision (sklearn ``average_precision_score``); binary tasks: of the positive class (1),
  multiclass: macro mean of one-vs-rest, multilabel: macro mean over labels.
* ``ece``: expected calibration error with 15 equal-width confidence bins (Guo et al. 2017): the top-label
  confidence against its accuracy, bins weighted by their share of images; multilabel: mean over labels of the
  binary form.
* ``brier``: binary: mean (p1 - y)^2 (sklearn ``brier_score_loss``); multiclass: mean over images of the squared
  distance between the score vector and the one-hot label (Brier's original, in [0, 2]).
* ``sensitivity`` / ``specificity`` (binary only; class 1 is the positive class, as in MedMNIST's AUC, so for
  BreastMNIST (1 = normal/benign) the specificity is the malignant recall): at the threshold on the class-1 score
  that maximises Youden's J = sensitivity + specificity - 1 on the *validation* predictions, applied unchanged to
  test (``threshold``).

Each is one function registered in :mod:`benchmarks.metric_registry` (``needs="scores"``, or ``"val_scores"`` for
the three that depend on the validation threshold); the report's clinical table shows every such metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_curve

from benchmarks.metric_registry import evaluate, metrics, register_metric
from benchmarks.metrics import MULTILABEL

ECE_BINS = 15


@register_metric("auprc", higher_is_better=True, needs="scores", label="AUPRC")
def auprc(scores: np.ndarray, labels: np.ndarray, task: str) -> float:
    if task == MULTILABEL:
        return float(average_precision_score(labels, scores, average="macro"))
    y = np.asarray(labels).reshape(-1).astype(int)
    if scores.shape[1] == 2:
        return float(average_precision_score(y, scores[:, 1]))
    onehot = np.eye(scores.shape[1])[y]
    present = onehot.sum(axis=0) > 0   # a class absent from the labels has no defined precision-recall curve
    return float(average_precision_score(onehot[:, present], scores[:, present], average="macro"))


def _ece_top_label(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """sum_b |acc_b - conf_b| * n_b / N over equal-width bins (lo, hi] of the confidence (0 falls in bin 0)."""
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += abs(correct[sel].mean() - confidence[sel].mean()) * sel.sum()
    return float(total / len(confidence))


@register_metric("ece", higher_is_better=False, needs="scores", label="ECE")
def ece(scores: np.ndarray, labels: np.ndarray, task: str, bins: int = ECE_BINS) -> float:
    if task == MULTILABEL:
        y = np.asarray(labels).astype(int)
        per = []
        for i in range(scores.shape[1]):
            p = scores[:, i]
            per.append(_ece_top_label(np.maximum(p, 1 - p), (p > 0.5) == (y[:, i] == 1), bins))
        return float(np.mean(per))
    y = np.asarray(labels).reshape(-1).astype(int)
    pred = (scores[:, 1] > 0.5).astype(int) if scores.shape[1] == 2 else scores.argmax(axis=1)
    return _ece_top_label(scores[np.arange(len(y)), pred], pred == y, bins)


@register_metric("brier", higher_is_better=False, needs="scores", label="Brier")
def brier(scores: np.ndarray, labels: np.ndarray, task: str) -> float:
    if task == MULTILABEL:
        return float(np.mean((scores - np.asarray(labels)) ** 2))
    y = np.asarray(labels).reshape(-1).astype(int)
    if scores.shape[1] == 2:
        return float(brier_score_loss(y, scores[:, 1]))
    return float(np.mean(np.sum((scores - np.eye(scores.shape[1])[y]) ** 2, axis=1)))


def youden_threshold(val_scores: np.ndarray, val_labels: np.ndarray) -> float:
    """The class-1 score threshold (predict positive when score >= it) maximising Youden's J on validation."""
    y = np.asarray(val_labels).reshape(-1).astype(int)
    fpr, tpr, thresholds = roc_curve(y, val_scores[:, 1])
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(thresholds[best], 1.0))     # roc_curve's first threshold is +inf (nobody positive)


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of ``scores[:, 1] >= threshold``."""
    y = np.asarray(labels).reshape(-1).astype(int)
    pred = scores[:, 1] >= threshold
    pos, neg = y == 1, y == 0
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec = float((~pred[neg]).mean()) if neg.any() else float("nan")
    return sens, spec


def _validation_threshold(val_scores: np.ndarray, val_labels: np.ndarray) -> float | None:
    """The Youden threshold of the validation predictions; None when validation lacks one of the two classes."""
    if len(np.unique(np.asarray(val_labels).reshape(-1))) != 2:
        return None
    return youden_threshold(val_scores, val_labels)


@register_metric("sensitivity", higher_is_better=True, needs="val_scores", tasks=("binary",), label="sensitivity")
def sensitivity(scores: np.ndarray, labels: np.ndarray, task: str, *, val_scores: np.ndarray,
                val_labels: np.ndarray) -> float:
    """Recall of class 1 on test at the validation Youden threshold."""
    thr = _validation_threshold(val_scores, val_labels)
    return float("nan") if thr is None else operating_point(scores, labels, thr)[0]


@register_metric("specificity", higher_is_better=True, needs="val_scores", tasks=("binary",), label="specificity")
def specificity(scores: np.ndarray, labels: np.ndarray, task: str, *, val_scores: np.ndarray,
                val_labels: np.ndarray) -> float:
    """Recall of class 0 on test at the validation Youden threshold."""
    thr = _validation_threshold(val_scores, val_labels)
    return float("nan") if thr is None else operating_point(scores, labels, thr)[1]


@register_metric("threshold", higher_is_better=None, needs="val_scores", tasks=("binary",),
                 label="Youden threshold")
def threshold(scores: np.ndarray, labels: np.ndarray, task: str, *, val_scores: np.ndarray,
              val_labels: np.ndarray) -> float:
    """The class-1 score threshold chosen on validation (reported so the operating point can be reused)."""
    thr = _validation_threshold(val_scores, val_labels)
    return float("nan") if thr is None else thr


def clinical_metrics(val_scores: np.ndarray, val_labels: np.ndarray, test_scores: np.ndarray,
                     test_labels: np.ndarray, task: str) -> dict[str, Any]:
    """Every registered prediction metric (``needs`` "scores" or "val_scores") on test; thresholds come from
    validation only. NaN where a metric is not defined (sensitivity on a multiclass task)."""
    return {spec.name: evaluate(spec, test_scores, test_labels, task, val_scores=val_scores, val_labels=val_labels)
            for spec in metrics("scores", "val_scores")}


def clinical_names() -> tuple[str, ...]:
    """The clinical table's metrics, in registration order."""
    return tuple(spec.name for spec in metrics("scores", "val_scores"))
