"""Accuracy-type metrics, computed exactly as MedMNIST's ``Evaluator`` does so numbers compare with its tables.

``getAUC`` / ``getACC`` semantics (medmnist 3.0.2, ``medmnist.evaluator``):
* multiclass: AUC = mean over classes of one-vs-rest ROC-AUC on the softmax scores; ACC = argmax accuracy.
* binary (2 classes): AUC = ROC-AUC of the class-1 score; ACC = (class-1 score > 0.5), which on softmax
  scores equals argmax (a tie at exactly 0.5 goes to class 0 in both).
* multilabel: per-label ROC-AUC averaged; ACC = per-label accuracy at threshold 0.5, averaged (on sigmoids).
The imbalanced medical sets also get balanced accuracy, macro-F1, per-class recall and the confusion matrix.
Each stored metric is one function registered with ``needs="record"`` (:mod:`benchmarks.metric_registry`):
``compute_metrics`` computes every such metric, so a new one reaches the records, the summary and the statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             recall_score, roc_auc_score)

from benchmarks.metric_registry import evaluate, metrics as registered_metrics, register_metric

MULTICLASS, MULTILABEL = "multiclass", "multilabel"


def scores_from_logits(logits: torch.Tensor | np.ndarray, task: str) -> np.ndarray:
    """Softmax (multiclass) or sigmoid (multilabel) scores as float64 numpy, as MedMNIST's evaluator expects."""
    t = torch.as_tensor(logits).detach().float().cpu()
    s = torch.sigmoid(t) if task == MULTILABEL else torch.softmax(t, dim=1)
    return s.double().numpy()


def _auc_safe(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC, NaN (not an exception) when only one class is present: tiny smoke-test subsets hit this."""
    if np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def auc(y_true: np.ndarray, scores: np.ndarray, task: str) -> float:
    """MedMNIST's getAUC on softmax / sigmoid scores."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if task == MULTILABEL:
        return float(np.mean([_auc_safe(y_true[:, i], scores[:, i]) for i in range(scores.shape[1])]))
    y_true = y_true.reshape(-1)
    if scores.shape[1] == 2:
        return _auc_safe(y_true, scores[:, 1])
    return float(np.mean([_auc_safe((y_true == i).astype(float), scores[:, i]) for i in range(scores.shape[1])]))


def auc_undefined(y_true: np.ndarray | torch.Tensor, task: str, num_classes: int,
                  class_names: list[str] | None = None) -> list[str]:
    """Why ROC-AUC is undefined on ``y_true``: one entry per class absent from it (multiclass, 2+ classes) or per
    label without both values (multilabel, ``"'name' (i) all 0"``); empty when AUC is defined.

    :func:`auc` returns NaN exactly when this list is non-empty, so a run can refuse AUC selection up front
    instead of discovering a NaN validation score after training.
    """
    y = np.asarray(torch.as_tensor(y_true).cpu().numpy())
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if task == MULTILABEL:
        out = []
        for i in range(num_classes):
            values = np.unique(y[:, i])
            if values.size < 2:
                out.append(f"{names[i]!r} ({i}) all {int(values[0]) if values.size else 'missing'}")
        return out
    counts = np.bincount(y.reshape(-1).astype(int), minlength=num_classes)
    return [f"{names[i]!r} ({i})" for i in range(num_classes) if counts[i] == 0]


def accuracy(y_true: np.ndarray, scores: np.ndarray, task: str, threshold: float = 0.5) -> float:
    """MedMNIST's getACC: argmax (multiclass), class-1 score > threshold (binary), per-label mean (multilabel)."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if task == MULTILABEL:
        pred = scores > threshold
        return float(np.mean([accuracy_score(y_true[:, i], pred[:, i]) for i in range(y_true.shape[1])]))
    y_true = y_true.reshape(-1)
    if scores.shape[1] == 2:
        return float(accuracy_score(y_true, scores[:, 1] > threshold))
    return float(accuracy_score(y_true, scores.argmax(axis=1)))


def _majority_share(counts: tuple[int, ...]) -> float:
    return max(counts) / sum(counts)


@register_metric("acc", higher_is_better=True, needs="record", label="ACC", chance=_majority_share)
def acc_metric(scores: np.ndarray, labels: np.ndarray, task: str) -> float:
    """MedMNIST's ACC (:func:`accuracy`); always answering the majority class scores its share of the test set."""
    return accuracy(labels, scores, task)


@register_metric("auc", higher_is_better=True, needs="record", label="AUC", chance=lambda counts: 0.5)
def auc_metric(scores: np.ndarray, labels: np.ndarray, task: str) -> float:
    """MedMNIST's AUC (:func:`auc`); a constant score ranks nothing, so its AUC is 0.5."""
    return auc(labels, scores, task)


@register_metric("balanced_acc", higher_is_better=True, needs="record", label="balanced ACC",
                 chance=lambda counts: 1.0 / len(counts))
def balanced_acc(scores: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Mean recall over the classes present in ``labels`` (sklearn's definition; a class absent from a small split
    is not counted as a 0); multilabel: mean over labels of the binary form at threshold 0.5. Chance: 1 / C."""
    y = np.asarray(labels)
    if task == MULTILABEL:
        pred = (scores > 0.5).astype(int)
        return float(np.mean([balanced_accuracy_score(y[:, i], pred[:, i]) for i in range(y.shape[1])]))
    y = y.reshape(-1).astype(int)
    pred = scores.argmax(axis=1)
    return float(recall_score(y, pred, labels=np.unique(y), average="macro", zero_division=0))


@register_metric("macro_f1", higher_is_better=True, needs="record", label="macro-F1",
                 chance=lambda counts: (2 * _majority_share(counts) / (1 + _majority_share(counts))) / len(counts))
def macro_f1(scores: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Mean F1 over the classes in ``labels`` or predicted (sklearn's macro average); multilabel: over labels at
    threshold 0.5. Chance: the majority class's F1 2p / (1 + p), the others 0, averaged over C classes."""
    y = np.asarray(labels)
    if task == MULTILABEL:
        return float(f1_score(y.astype(int), (scores > 0.5).astype(int), average="macro", zero_division=0))
    y = y.reshape(-1).astype(int)
    pred = scores.argmax(axis=1)
    return float(f1_score(y, pred, labels=np.union1d(y, pred), average="macro", zero_division=0))


def compute_metrics(y_true: np.ndarray | torch.Tensor, logits: np.ndarray | torch.Tensor, task: str,
                    class_names: list[str] | None = None) -> dict[str, Any]:
    """Every registered ``needs="record"`` metric (``acc``, ``auc``, ``balanced_acc``, ``macro_f1``, ...) from raw
    logits, plus ``n``, ``per_class_recall`` and ``confusion_matrix`` (multiclass) or ``per_label_auc``
    (multilabel). JSON-ready (floats and lists)."""
    y = np.asarray(torch.as_tensor(y_true).cpu().numpy())
    scores = scores_from_logits(logits, task)
    out: dict[str, Any] = {spec.name: evaluate(spec, scores, y, task) for spec in registered_metrics("record")}
    out["n"] = int(len(y))
    if task == MULTILABEL:
        out["per_label_auc"] = [_auc_safe(y[:, i], scores[:, i]) for i in range(y.shape[1])]
        if class_names:
            out["label_names"] = list(class_names)
        return out
    y = y.reshape(-1).astype(int)
    labels = list(range(scores.shape[1]))
    pred = scores.argmax(axis=1)
    out["per_class_recall"] = [float(r) for r in recall_score(y, pred, labels=labels, average=None, zero_division=0)]
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=labels).tolist()
    if class_names:
        out["class_names"] = list(class_names)
    return out
