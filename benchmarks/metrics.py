"""Accuracy-type metrics, computed exactly as MedMNIST's ``Evaluator`` does so numbers compare with its tables.

``getAUC`` / ``getACC`` semantics (medmnist 3.0.2, ``medmnist.evaluator``):
* multiclass: AUC = mean over classes of one-vs-rest ROC-AUC on the softmax scores; ACC = argmax accuracy.
* binary (2 classes): AUC = ROC-AUC of the class-1 score; ACC = (class-1 score > 0.5), which on softmax
  scores equals argmax (a tie at exactly 0.5 goes to class 0 in both).
* multilabel: per-label ROC-AUC averaged; ACC = per-label accuracy at threshold 0.5, averaged (on sigmoids).
The imbalanced medical sets also get balanced accuracy, macro-F1, per-class recall and the confusion matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             recall_score, roc_auc_score)

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


def compute_metrics(y_true: np.ndarray | torch.Tensor, logits: np.ndarray | torch.Tensor, task: str,
                    class_names: list[str] | None = None) -> dict[str, Any]:
    """All reported metrics from raw logits: ``acc``, ``auc``, ``balanced_acc``, ``macro_f1``, ``per_class_recall``,
    ``confusion_matrix`` (multiclass) or ``per_label_auc`` (multilabel). JSON-ready (floats and lists)."""
    y = np.asarray(torch.as_tensor(y_true).cpu().numpy())
    scores = scores_from_logits(logits, task)
    out: dict[str, Any] = {"acc": accuracy(y, scores, task), "auc": auc(y, scores, task), "n": int(len(y))}
    if task == MULTILABEL:
        pred = (scores > 0.5).astype(int)
        out["per_label_auc"] = [_auc_safe(y[:, i], scores[:, i]) for i in range(y.shape[1])]
        out["macro_f1"] = float(f1_score(y.astype(int), pred, average="macro", zero_division=0))
        out["balanced_acc"] = float(np.mean([balanced_accuracy_score(y[:, i], pred[:, i])
                                             for i in range(y.shape[1])]))
        if class_names:
            out["label_names"] = list(class_names)
        return out
    y = y.reshape(-1).astype(int)
    labels = list(range(scores.shape[1]))
    pred = scores.argmax(axis=1)
    # sklearn's definitions: balanced accuracy averages recall over the classes present in y_true, macro-F1 over
    # the classes in y_true or predicted; a class absent from both (a small split) is not counted as a 0
    out["balanced_acc"] = float(recall_score(y, pred, labels=np.unique(y), average="macro", zero_division=0))
    out["macro_f1"] = float(f1_score(y, pred, labels=np.union1d(y, pred), average="macro", zero_division=0))
    out["per_class_recall"] = [float(r) for r in recall_score(y, pred, labels=labels, average=None, zero_division=0)]
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=labels).tolist()
    if class_names:
        out["class_names"] = list(class_names)
    return out
